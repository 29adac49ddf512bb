"""ONNX files in and out of deploykit: loading them safely and reading their input/output specs
(load.py), and the tensors fed to them, synthetic or a user's .npz (feeds.py)."""

from .feeds import (FEEDABLE as FEEDABLE, MAX_INPUT_ELEMENTS as MAX_INPUT_ELEMENTS,
                    SYNTHETIC_SEQ as SYNTHETIC_SEQ, check_feedable as check_feedable,
                    check_shape as check_shape, check_size as check_size,
                    load_npz_feeds as load_npz_feeds, make_feeds as make_feeds,
                    read_npz as read_npz, resolve_shape as resolve_shape)
from .load import (MODULE_KEY as MODULE_KEY, check_external_data as check_external_data,
                   check_opset as check_opset, io_specs as io_specs, load_onnx as load_onnx,
                   quiet as quiet)
