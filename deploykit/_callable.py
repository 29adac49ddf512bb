"""Sub-packages that are API functions too (`deploykit.export`, `.compress`, `.search`)."""

import types


class CallableModule(types.ModuleType):
    """The package stays an ordinary module for every import form; calling it calls
    `deploykit.api.<name>` (`deploykit.export(module, example_inputs)`)."""

    def __call__(self, *args, **kwargs):
        from . import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)
