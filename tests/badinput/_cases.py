"""The bad-input corpus, generated: every verb x every file-taking option x every kind of bad
file, path or value. A case is argv (formatted with the world's paths, `out` = the case's own
empty output folder, `ro` = a folder nothing can be written in), the exit code it must give and a
piece of text the one error line must contain (the culprit: a path, option or input name)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Case:
    verb: str
    name: str
    argv: tuple[str, ...]
    culprit: str
    code: int = 2
    prepare: Callable | None = field(default=None, compare=False)  # (out, world) -> None

    @property
    def id(self) -> str:
        return f"{self.verb}-{self.name}"


STORE = ("--store", "{out}/results.sqlite")

# how each verb is called with a good model; MODEL is replaced by the file under test
BASE = {
    "export": ("export", "MODEL", "-o", "{out}/m.onnx"),
    "compress": ("compress", "MODEL", "--recipe", "fold-bn", "-o", "{out}/c.onnx",
                 "--no-measure", *STORE),
    "profile": ("profile", "MODEL", "--max-time", "0.2", "-q", *STORE),
    "baseline": ("baseline", "MODEL", "-o", "{out}/b.json", "--max-time", "0.2", "-q", *STORE),
    "check": ("check", "MODEL", "-b", "{baseline}", "--max-time", "0.2", "-q", *STORE),
    "search": ("search", "MODEL", "-o", "{out}/search", "--time-limit", "5s", "-q", *STORE),
    "package": ("package", "MODEL", "-o", "{out}/bundle", "--no-measure", *STORE),
    "tune": ("tune", "MODEL", "--trials", "1"),
}
MODEL_VERBS = tuple(BASE)
INPUT_VERBS = ("compress", "profile", "baseline", "search", "package")
SHAPE_VERBS = ("export", "compress", "profile", "baseline", "search", "package")
STORE_VERBS = ("compress", "profile", "baseline", "check", "search", "package", "history")


def _with(verb: str, model: str = "{mlp}", extra: tuple[str, ...] = (),
          drop_store: bool = False) -> tuple[str, ...]:
    if verb == "history":
        return ("history", *extra)
    argv = [model if a == "MODEL" else a for a in BASE[verb]]
    if drop_store and "--store" in argv:
        i = argv.index("--store")
        del argv[i:i + 2]
    return (*argv, *extra)


# bad model files: (name, placeholder, culprit)
BAD_MODELS = [
    ("missing", "{missing_onnx}", "missing.onnx"),
    ("empty", "{empty_onnx}", "empty.onnx"),
    ("truncated", "{truncated}", "truncated.onnx"),
    ("garbage", "{garbage_onnx}", "garbage.onnx"),
    ("text", "{text_onnx}", "text.onnx"),
    ("directory", "{dir_onnx}", "folder.onnx"),
    ("string-input", "{string_in}", "string"),
    ("negative-dim", "{neg_dim}", "-3"),
    ("zero-dim", "{zero_dim}", "dimension 0"),
    ("opset-99", "{opset99}", "opset"),
    ("external-data-missing", "{ext_missing}", "ext.bin"),
    ("external-data-escapes", "{ext_escape}", "outside the model's folder"),
]

BAD_INPUTS = [  # --inputs FILE
    ("missing", "{missing_npz}", "missing.npz"),
    ("npy", "{npy}", "single .npy array"),
    ("garbage", "{garbage_npz}", "not an .npz archive"),
    ("empty-file", "{empty_npz}", "empty.npz"),
    ("strings", "{strings_npz}", "not numeric"),
    ("objects", "{objects_npz}", "objects.npz"),
    ("wrong-name", "{wrongname_npz}", "no array named 'x'"),
    ("wrong-shape", "{wrongshape_npz}", "input 'x' has shape"),
    ("directory", "{a_dir}", "a_dir"),
]

BAD_SHAPES = [  # --shape VALUE
    ("absurd", "x=4000000000,16", "elements"),
    ("negative", "x=-1,16", "bad --shape"),
    ("zero", "x=0,16", "bad --shape"),
    ("not-int", "x=a,16", "bad --shape"),
    ("float", "x=1.5,16", "bad --shape"),
    ("no-equals", "x", "bad --shape"),
    ("no-name", "=1,16", "bad --shape"),
    ("empty-dims", "x=", "bad --shape"),
]
# these need the model to know they are wrong (not for export, which has no model yet)
BAD_SHAPES_MODEL = [
    ("unknown-input", "nope=1,16", "nope"),
    ("wrong-rank", "x=1,16,3", "input 'x' has shape"),
    ("wrong-fixed-dim", "x=1,15", "input 'x' has shape"),
]

BAD_CALIB = [  # --calib DATA
    ("missing", "{missing_npz}", "missing.npz"),
    ("npy", "{npy}", "single .npy array"),
    ("garbage", "{garbage_npz}", "not an .npz archive"),
    ("strings", "{strings_npz}", "not numeric"),
    ("empty-folder", "{calib_empty_dir}", "calib_empty"),
    ("wrong-shape", "{wrongshape_npz}", "input 'x' has shape"),
    ("wrong-name", "{wrongname_npz}", "no array named 'x'"),
]

BAD_STORES = [  # --store VALUE
    ("postgres-url", "postgresql://user@host:5432/db", "postgresql://"),
    ("sqlite-url", "sqlite:///tmp/x.sqlite", "sqlite://"),
    ("directory", "{a_dir}", "a_dir"),
    ("foreign-sqlite", "{foreign_db}", "not a deploykit results store"),
    ("corrupt", "{corrupt_db}", "not a readable SQLite database"),
    ("newer-schema", "{newer_db}", "newer"),
    ("parent-is-file", "{a_file}/results.sqlite", "a_file"),
    ("unwritable", "{ro}/results.sqlite", "cannot create"),
]

# output options: (verb, option, kind, argv without the option)
OUTPUTS = [
    ("export", "-o", "file", ("export", "{mlp}")),
    ("export", "--json", "file", ("export", "{mlp}", "-o", "{out}/m.onnx")),
    ("compress", "-o", "file", ("compress", "{mlp}", "--recipe", "fold-bn", "--no-measure",
                                *STORE)),
    ("compress", "--json", "file", ("compress", "{mlp}", "--recipe", "fold-bn", "--no-measure",
                                    "-o", "{out}/c.onnx", *STORE)),
    ("compress", "--keep-steps", "dir", ("compress", "{mlp}", "--recipe", "fold-bn",
                                         "--no-measure", "-o", "{out}/c.onnx", *STORE)),
    ("profile", "--json", "file", ("profile", "{mlp}", "-q", *STORE)),
    ("profile", "--trace", "file", ("profile", "{mlp}", "-q", *STORE)),
    ("baseline", "-o", "file", ("baseline", "{mlp}", "-q", *STORE)),
    ("check", "--json", "file", ("check", "{mlp}", "-b", "{baseline}", "-q", *STORE)),
    ("check", "--junit", "file", ("check", "{mlp}", "-b", "{baseline}", "-q", *STORE)),
    ("check", "--markdown", "file", ("check", "{mlp}", "-b", "{baseline}", "-q", *STORE)),
    ("search", "-o", "dir", ("search", "{mlp}", "-q", *STORE)),
    ("package", "-o", "dir", ("package", "{mlp}", "--no-measure", *STORE)),
    ("report", "-o", "dir", ("report", "{sr_minimal}")),
    ("distill", "-o", "file", ("distill", "--teacher", "{factories}:build", "--student-recipe",
                               "lowrank:ratio=0.5", "--data", "{distill_npz}")),
    ("distill", "--json", "file", ("distill", "--teacher", "{factories}:build",
                                   "--student-recipe", "lowrank:ratio=0.5", "--data",
                                   "{distill_npz}", "-o", "{out}/s.onnx")),
    ("verify", "--json", "file", ("verify", "{out}/nobundle")),
]


def _output_cases() -> list[Case]:
    cases = []
    for verb, opt, kind, argv in OUTPUTS:
        o = opt.strip("-")
        suffix = ".onnx" if (opt == "-o" and verb in ("export", "compress", "distill")) else (
            ".json" if kind == "file" else "")
        if kind == "file":
            # a folder named without .onnx fails the suffix check first, naming it
            bad = [("existing-dir", "{a_dir}", "is a directory" if suffix != ".onnx" else "a_dir"),
                   ("parent-is-file", "{a_file}/x" + suffix, "a_file"),
                   ("unwritable", "{ro}/x" + suffix, "cannot write"),
                   ("deep-parent-is-file", "{a_file}/d/e/x" + suffix, "a_file")]
            if verb != "verify":
                bad.append(("empty-path", "", "--output" if verb == "compress" and opt == "-o"
                            else "empty path"))
        else:
            bad = [("is-a-file", "{a_file}", "a_file"),
                   ("parent-is-file", "{a_file}/sub", "a_file"),
                   ("unwritable", "{ro}/sub", "cannot write")]
        for name, value, culprit in bad:
            if verb == "verify" and name != "unwritable":
                continue  # verify fails on the missing bundle first; its --json is checked below
            cases.append(Case(verb, f"{o}-{name}", (*argv, opt, value), culprit))
    # same file for two outputs
    cases += [
        Case("export", "json-same-as-o", ("export", "{mlp}", "-o", "{out}/m.onnx", "--json",
                                          "{out}/m.onnx"), "same file"),
        Case("check", "json-same-as-junit", ("check", "{mlp}", "-b", "{baseline}", "--json",
                                             "{out}/r", "--junit", "{out}/r", *STORE),
             "same file"),
        Case("profile", "json-same-as-trace", ("profile", "{mlp}", "--json", "{out}/r",
                                               "--trace", "{out}/r", *STORE), "same file"),
        Case("compress", "json-same-as-o", ("compress", "{mlp}", "--recipe", "fold-bn", "-o",
                                            "{out}/c.onnx", "--json", "{out}/c.onnx", *STORE),
             "same file"),
        Case("profile", "trace-without-per-op", ("profile", "{mlp}", "--trace", "{out}/t.json",
                                                 "--no-per-op", *STORE), "--no-per-op"),
        Case("profile", "trace-with-compare", ("profile", "{mlp}", "{mlp}", "--trace",
                                               "{out}/t.json", *STORE), "--compare"),
        Case("profile", "compare-of-one", ("profile", "{mlp}", "--compare", *STORE),
             "at least two models or targets"),
        Case("package", "existing-bundle-no-force", ("package", "{mlp}", "-o", "{a_dir}",
                                                     "--no-measure", *STORE), "already exists"),
        Case("package", "force-over-non-bundle", ("package", "{mlp}", "-o", "{nonbundle}",
                                                  "--no-measure", "--force", *STORE),
             "not a bundle"),
        Case("package", "force-over-file", ("package", "{mlp}", "-o", "{a_file}",
                                            "--no-measure", "--force", *STORE), "a_file"),
        Case("export", "o-not-onnx", ("export", "{mlp}", "-o", "{out}/m.txt"), ".onnx"),
        Case("compress", "o-not-onnx", ("compress", "{mlp}", "--recipe", "fold-bn", "-o",
                                        "{out}/c.txt", *STORE), ".onnx"),
        Case("distill", "o-not-onnx", ("distill", "--teacher", "{factories}:build",
                                       "--student-recipe", "lowrank:ratio=0.5", "--data",
                                       "{distill_npz}", "-o", "{out}/s.txt"), ".onnx"),
    ]
    return cases


def _model_cases() -> list[Case]:
    cases = []
    for verb in MODEL_VERBS:
        for name, model, culprit in BAD_MODELS:
            if verb == "export" and name in ("directory",):
                culprit = "folder.onnx"
            cases.append(Case(verb, f"model-{name}", _with(verb, model), culprit))
        if verb != "export":
            cases.append(Case(verb, "model-not-onnx-suffix", _with(verb, "{not_onnx_ext}"),
                              "model.txt" if verb not in ("compress", "package", "tune")
                              else "model.txt"))
    return cases


def _input_cases() -> list[Case]:
    cases = []
    for verb in INPUT_VERBS:
        for name, value, culprit in BAD_INPUTS:
            cases.append(Case(verb, f"inputs-{name}", _with(verb, extra=("--inputs", value)),
                              culprit))
    for verb in SHAPE_VERBS:
        model = "{factories}:build" if verb == "export" else "{mlp}"
        for name, value, culprit in BAD_SHAPES:
            cases.append(Case(verb, f"shape-{name}", _with(verb, model, ("--shape", value)),
                              culprit))
        if verb != "export":
            for name, value, culprit in BAD_SHAPES_MODEL:
                cases.append(Case(verb, f"shape-{name}", _with(verb, extra=("--shape", value)),
                                  culprit))
    for verb in ("compress", "search"):
        recipe = ("--recipe", "quantize-static") if verb == "compress" else ()
        for name, value, culprit in BAD_CALIB:
            argv = _with(verb, extra=("--calib", value))
            if recipe:
                argv = tuple(a if a != "fold-bn" else "quantize-static" for a in argv)
            cases.append(Case(verb, f"calib-{name}", argv, culprit))
    return cases


def _store_cases() -> list[Case]:
    cases = []
    for verb in STORE_VERBS:
        for name, value, culprit in BAD_STORES:
            if verb == "history" and name in ("unwritable", "parent-is-file"):
                culprit = "no results store"
            cases.append(Case(verb, f"store-{name}", _with(verb, extra=("--store", value),
                                                          drop_store=True), culprit))
    return cases


def _baseline_cases() -> list[Case]:
    from _world import hostile_baselines

    cases = [Case("check", f"baseline-{name}", _with("check", extra=("-b", f"{{bl_{name}}}")),
                  f"bl_{name}.json") for name in hostile_baselines()]
    cases += [
        Case("check", "baseline-missing", _with("check", extra=("-b", "{out}/none.json")),
             "none.json"),
        Case("check", "baseline-directory", _with("check", extra=("-b", "{a_dir}")), "a_dir"),
        Case("check", "baseline-other-model", ("check", "{other}", "-b", "{baseline}", *STORE),
             "different model"),
        Case("check", "against-other-model", _with("check", extra=("--against", "{other}")),
             "other.onnx"),
        Case("check", "against-missing", _with("check", extra=("--against", "{missing_onnx}")),
             "missing.onnx"),
        Case("check", "threshold-garbage", _with("check", extra=("--max-slowdown", "fast")),
             "threshold"),
        Case("check", "threshold-negative", _with("check", extra=("--max-slowdown=-5%",)),
             "threshold"),
        Case("check", "threshold-nan", _with("check", extra=("--max-slowdown", "nan")),
             "threshold"),
        Case("check", "max-time-zero", _with("check", extra=("--max-time", "0")), "--max-time"),
        Case("check", "max-time-nan", _with("check", extra=("--max-time", "nan")), "--max-time"),
        Case("check", "threads-zero", _with("check", extra=("--threads", "0")), "--threads"),
        Case("baseline", "max-time-negative", _with("baseline", extra=("--max-time", "-1")),
             "--max-time"),
        Case("baseline", "warmup-negative", _with("baseline", extra=("--warmup-max", "-1")),
             "--warmup-max"),
        Case("baseline", "target-unknown", _with("baseline", extra=("--target", "nope")),
             "nope"),
        Case("check", "update-baseline-unwritable", ("check", "{mlp}", "-b", "{ro}/b.json",
                                                     "--update-baseline", *STORE), "cannot write"),
    ]
    return cases


def _bundle_cases() -> list[Case]:
    from _bundle_cases import BUNDLE_CASES

    return [Case("verify", name, ("verify", "{out}/bundle", *extra), culprit, code, prepare)
            for name, prepare, culprit, code, extra in BUNDLE_CASES]


def _verb_specific() -> list[Case]:
    S = STORE
    c = [
        # compress recipes
        *[Case("compress", f"recipe-{n}", ("compress", "{mlp}", "--recipe", r, "-o",
                                           "{out}/c.onnx", *S), cul)
          for n, r, cul in [("unknown-step", "fold-everything", "fold-everything"),
                            ("bad-field", "prune-channels:nope=1", "nope"),
                            ("bad-value", "prune-channels:ratio=abc", "abc"),
                            ("out-of-range", "prune-channels:ratio=2", "ratio"),
                            ("empty", " ; ", "recipe"),
                            ("toml-broken", "{bad_toml}", "bad.toml"),
                            ("toml-missing", "{out}/none.toml", "none.toml"),
                            ("toml-no-name", "{nostep_toml}", "nostep.toml")]],
        # a device pool's hang timeout must be a positive number of seconds
        *[Case(verb, f"device-timeout-{n}", _with(verb, extra=(
            *(() if verb == "check" else ("--target", "tvm-aarch64")),  # check: the baseline's
            "--tracker", "127.0.0.1:9", "--device", "k", "--device-timeout", v)),
            "--device-timeout")
          for verb in ("profile", "search", "check")
          for n, v in (("nan", "nan"), ("zero", "0"), ("negative", "-5"))],
        Case("compress", "no-output", ("compress", "{mlp}", "--recipe", "fold-bn"), "--output"),
        Case("compress", "calib-batches-zero", _with("compress", extra=("--calib-batches", "0")),
             "--calib-batches"),
        Case("compress", "rel-ci-bad", _with("compress", extra=("--rel-ci", "2")), "--rel-ci"),
        Case("compress", "target-unknown", _with("compress", extra=("--target", "nope")), "nope"),
        Case("compress", "target-toml-missing", _with("compress", extra=("--target",
                                                                          "{out}/t.toml")),
             "t.toml"),
        Case("compress", "target-toml-broken", _with("compress", extra=("--target",
                                                                         "{target_bad_toml}")),
             "target_bad.toml"),
        # profile
        Case("profile", "max-time-zero", _with("profile", extra=("--max-time", "0")),
             "--max-time"),
        Case("profile", "min-samples-zero", _with("profile", extra=("--min-samples", "0")),
             "--min-samples"),
        Case("profile", "threads-zero", _with("profile", extra=("--threads", "0")), "threads"),
        Case("profile", "target-unknown", _with("profile", extra=("--target", "nope")), "nope"),
        Case("profile", "device-on-ort", _with("profile", extra=("--device", "k", "--tracker",
                                                                  "h:1")), "--device"),
        Case("profile", "device-bad-scheme", _with("profile", extra=("--device", "ftp://x")),
             "ftp://x"),
        Case("profile", "device-bad-port", _with("profile", extra=("--device",
                                                                    "ssh://u@h:99999")), "port"),
        Case("profile", "device-needed", _with("profile", extra=("--target", "ort-aarch64")),
             "ort-aarch64"),
        Case("profile", "device-wait-quiet", _with("profile", extra=(
            "--device", "ssh://u@h", "--wait-quiet", "5")), "--wait-quiet"),
        Case("check", "device-without-against", _with("check", extra=("--device", "ssh://u@h")),
             "--against"),
        Case("profile", "second-model-missing", ("profile", "{mlp}", "{missing_onnx}", *S),
             "missing.onnx"),
        # export
        *[Case("export", f"source-{n}", ("export", src, "-o", "{out}/m.onnx"), cul)
          for n, src, cul in [("py-missing", "{out}/none.py:build", "none.py"),
                              ("no-factory", "{factories}:nothing", "nothing"),
                              ("factory-raises", "{factories}:raises", "factory exploded"),
                              ("not-a-module", "{factories}:not_module", "not_module"),
                              ("syntax-error", "{syntax_py}:build", "syntax.py"),
                              ("no-colon", "{factories}", "factories.py")]],
        Case("export", "opset-99", ("export", "{mlp}", "-o", "{out}/m.onnx", "--opset", "99"),
             "--opset 99"),
        Case("export", "opset-1", ("export", "{mlp}", "-o", "{out}/m.onnx", "--opset", "1"),
             "--opset 1"),
        Case("export", "weights-missing", ("export", "{factories}:build", "-o", "{out}/m.onnx",
                                           "--weights", "{out}/none.pt"), "none.pt"),
        Case("export", "weights-garbage", ("export", "{factories}:build", "-o", "{out}/m.onnx",
                                           "--weights", "{garbage_pt}"), "garbage.pt"),
        Case("export", "dynamic-axis-bad", ("export", "{factories}:build", "-o", "{out}/m.onnx",
                                            "--dynamic-axis", "x=zero:batch"), "--dynamic-axis"),
        # search
        *[Case("search", n, _with("search", extra=extra), cul)
          for n, extra, cul in [("time-limit-bad", ("--time-limit", "soon"), "--time-limit"),
                                ("time-limit-zero", ("--time-limit", "0s"), "--time-limit"),
                                ("families-unknown", ("--families", "magic"), "magic"),
                                ("min-fidelity-zero", ("--min-fidelity", "0"), "--min-fidelity"),
                                ("budget-negative", ("--budget-ms", "-1"), "--budget-ms"),
                                ("eval-missing", ("--eval", "{out}/none.py:f"), "none.py"),
                                ("eval-no-fn", ("--eval", "{factories}:nothing"), "nothing"),
                                ("target-unknown", ("--target", "nope"), "nope")]],
        # package
        Case("package", "original-missing", _with("package", extra=("--original",
                                                                     "{missing_onnx}")),
             "missing.onnx"),
        Case("package", "original-other-signature", _with("package", extra=("--original",
                                                                             "{other}")),
             "another signature"),
        Case("package", "original-garbage", _with("package", extra=("--original",
                                                                     "{garbage_onnx}")),
             "garbage.onnx"),
        Case("package", "atol-frac-zero", _with("package", extra=("--atol-frac", "0")),
             "--atol-frac"),
        Case("package", "target-unknown", _with("package", extra=("--target", "nope")), "nope"),
        # report
        *[Case("report", n, ("report", src, "-o", "{out}/r"), cul)
          for n, src, cul in [("missing", "{out}/none", "none"),
                              ("minimal", "{sr_minimal}", "sr_minimal"),
                              ("schema-only", "{sr_schema1}", "sr_schema1"),
                              ("bad-candidates", "{sr_badcands}", "sr_badcands"),
                              ("wrong-kind", "{sr_wrongkind}", "sr_wrongkind"),
                              ("not-json", "{sr_notjson}", "sr_notjson"),
                              ("json-list", "{sr_list}", "sr_list"),
                              ("empty-folder", "{sr_empty}", "sr_empty"),
                              ("a-model", "{mlp}", "mlp.onnx")]],
        # history
        Case("history", "limit-zero", ("history", "--limit", "0", *S), "--limit"),
        Case("history", "alpha-bad", ("history", "--alpha", "2", *S), "--alpha"),
        Case("history", "no-store", ("history", "--store", "{out}/none.sqlite"),
             "no results store"),
        # tune
        Case("tune", "db-is-a-file", ("tune", "{mlp}", "--trials", "1", "--db", "{a_file}"),
             "a_file"),
        Case("tune", "trials-zero", ("tune", "{mlp}", "--trials", "0"), "--trials"),
        Case("tune", "ort-target", ("tune", "{mlp}", "--trials", "1", "--target", "ort-cpu"),
             "TVM target"),
        # verify
        Case("verify", "repeat-zero", ("verify", "{out}/bundle", "--repeat", "0"), "--repeat"),
        Case("verify", "missing", ("verify", "{out}/none"), "none"),
        Case("verify", "a-file", ("verify", "{a_file}"), "a_file"),
        Case("verify", "device-without-tracker", ("verify", "{out}/bundle", "--device", "k"),
             "--tracker", prepare="intact"),
        Case("verify", "ssh-device-with-tracker", ("verify", "{out}/bundle", "--device",
                                                   "ssh://u@h", "--tracker", "h:1"), "--tracker",
             prepare="intact"),
    ]
    # distill
    D = ("--student-recipe", "lowrank:ratio=0.5", "-o", "{out}/s.onnx")
    c += [Case("distill", n, ("distill", "--teacher", teacher, "--data", data, *extra, *D), cul)
          for n, teacher, data, extra, cul in [
              ("teacher-missing", "{out}/none.py:build", "{distill_npz}", (), "none.py"),
              ("teacher-raises", "{factories}:raises", "{distill_npz}", (), "factory exploded"),
              ("teacher-not-module", "{factories}:not_module", "{distill_npz}", (), "not_module"),
              ("teacher-weights-garbage", "{factories}:build", "{distill_npz}",
               ("--teacher-weights", "{garbage_pt}"), "garbage.pt"),
              ("data-missing", "{factories}:build", "{missing_npz}", (), "missing.npz"),
              ("data-npy", "{factories}:build", "{npy}", (), "single .npy array"),
              ("data-garbage", "{factories}:build", "{garbage_npz}", (), "not an .npz"),
              ("data-strings", "{factories}:build", "{strings_npz}", (), "not numeric"),
              ("data-no-x", "{factories}:build", "{nox_npz}", (), "no array 'x'"),
              ("data-wrong-width", "{factories}:build", "{wide_npz}", (), "wide.npz"),
              ("data-y-mismatch", "{factories}:build", "{ymismatch_npz}", (), "rows"),
              ("data-y-float", "{factories}:build", "{yfloat_npz}", (), "integer labels"),
              ("epochs-zero", "{factories}:build", "{distill_npz}", ("--epochs", "0"), "epochs"),
              ("temperature-zero", "{factories}:build", "{distill_npz}", ("-T", "0"),
               "temperature"),
              ("alpha-two", "{factories}:build", "{distill_npz}", ("--alpha", "2"), "alpha"),
              ("test-fraction-one", "{factories}:build", "{distill_npz}",
               ("--test-fraction", "1"), "--test-fraction"),
          ]]
    c += [Case("distill", f"student-recipe-{n}",
               ("distill", "--teacher", "{factories}:build", "--data", "{distill_npz}",
                "--student-recipe", r, "-o", "{out}/s.onnx"), cul)
          for n, r, cul in [("ratio-abc", "lowrank:ratio=abc", "ratio='abc'"),
                            ("unknown-step", "shrink:ratio=0.5", "shrink"),
                            ("empty", " ; ", "student-recipe"),
                            ("bad-field", "lowrank:speed=2", "lowrank")]]
    return c


def all_cases() -> list[Case]:
    cases = (_model_cases() + _input_cases() + _store_cases() + _output_cases()
             + _baseline_cases() + _bundle_cases() + _verb_specific())
    ids = [c.id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, f"duplicate case ids: {sorted(dup)}"
    return cases
