"""Model files that cannot carry code: the check every `.pt2` (torch.export) archive passes before torch reads it.

`torch.export.load` (torch 2.14, `torch/export/pt2_archive/_package.py`, `torch/_export/serde/serialize.py`) runs
code an archive carries: it unpickles weights and constants marked `use_pickle` with weights_only=False, custom and
opaque objects, legacy `data/weights/model.pt` files and, when weights_only fails, the sample inputs; it loads
AOTInductor libraries; it evaluates the program's symbolic shape expressions with sympy (Python `eval`), compiles
its guard code, and resolves each node's target by name (any `torch.*` attribute). `check_archive` reads the zip
itself and admits only what `torch.export.save` writes for an mtl export: raw tensor data for every weight and
constant, sample inputs loadable with weights_only=True, nodes calling aten/prims operators (and arithmetic on
sizes), plain shape formulas, no guard code. Anything else is a one-line DataError naming the file and the entry.
"""

from __future__ import annotations

import io
import json
import re
import tokenize
import zipfile
from pathlib import Path

from mtl.checkpoint import model_kind
from mtl.errors import DataError
from mtl.models.backbones import load_weights_only

NO_CODE = "a model file must not carry code"
WEIGHTS, CONSTANTS = "data/weights/model_weights_config.json", "data/constants/model_constants_config.json"
SAMPLE_INPUTS, PROGRAM = "data/sample_inputs/model.pt", "models/model.json"
ENTRIES = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id", PROGRAM,
           WEIGHTS, CONSTANTS, SAMPLE_INPUTS}
ENTRY = re.compile(r"data/weights/weight_\d+|data/constants/tensor_\d+|extra/[\w.-]+")
TARGET = re.compile(r"torch\.ops\.(aten|prims)\.(?!__)\w+(\.(?!__)\w+)?"
                    r"|_operator\.(getitem|add|sub|mul|floordiv|truediv|mod|pow|neg|pos|abs|eq|ne|lt|le|gt|ge|and_"
                    r"|or_|not_)|math\.(ceil|floor|trunc|sqrt)|torch\.sym_(float|int|max|min|not|ite|sqrt|sum)")
# the names a shape formula may use: sympy's constructors as srepr writes them and torch's sympy functions
FORMULA_NAMES = set("""Symbol Integer Float Rational Add Mul Pow Max Min Abs Mod floor ceiling sqrt Eq Ne Lt Le Gt Ge
    Equality Unequality StrictLessThan StrictGreaterThan LessThan GreaterThan And Or Not true false oo zoo nan True
    False FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift PowByNatural
    FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt
    RoundDecimal ToFloat Identity""".split())
FORMULA_OPERATORS = {"(", ")", ",", "=", "+", "-", "*", "/", "**", "//", "%", "<", ">", "<=", ">=", "==", "!=", "&",
                     "|", "~"}
SYMBOL = re.compile(r"[a-z]+\d+")  # s77, u0: torch's size symbols
FORMULA_STRING = re.compile(r"""(['"])([a-z]+\d*|[-+]?[\d.]+(e[-+]?\d+)?)\1""")
KEYWORD = re.compile(r"[a-z]+(_[a-z]+)*")  # an assumption passed by name: Symbol('s0', positive=True)


def check_model_file(data: bytes, name: str | Path) -> str:
    """`mtl.checkpoint.model_kind` of a model file's bytes ("checkpoint", "torch-export" or "onnx"), a `.pt2`
    checked by `check_archive`: what a driver runs before it ships the bytes to Ray actors."""
    kind = model_kind(data, name)
    if kind == "torch-export":
        check_archive(data, name)
    return kind


def check_archive(data: bytes, name: str | Path) -> None:
    """Refuse a `.pt2` that carries code (see the module docstring); returns when torch may load it."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except zipfile.BadZipFile as err:
        raise DataError(f"{name}: a damaged torch.export file ({err})") from None
    names = [info.filename for info in infos]
    if not names:
        raise DataError(f"{name}: not a torch.export program mtl can read (an empty zip archive)")
    if len(set(names)) != len(names) or not data.startswith(b"PK\x03\x04") or \
            min(info.header_offset for info in infos) != 0:
        raise DataError(f"{name}: refused: a zip with repeated entries or data before its first entry (zip readers "
                        "would disagree on its content)")
    root = names[0].split("/")[0]
    entries = {}
    for entry in names:
        relative = entry[len(root) + 1:] if entry.startswith(root + "/") else None
        if relative not in ENTRIES and not ENTRY.fullmatch(relative or ""):
            raise DataError(f"{name}: refused: archive entry {entry!r} is not part of a torch.export program mtl "
                            f"loads (pickled objects, compiled libraries and legacy weight files are not; {NO_CODE})")
        entries[relative] = entry
    missing = sorted({PROGRAM, WEIGHTS, CONSTANTS, SAMPLE_INPUTS} - set(entries))
    if missing:
        raise DataError(f"{name}: not a torch.export program mtl can read (no {missing[0]} in it)")
    read = {key: archive.read(entries[key]) for key in (PROGRAM, WEIGHTS, CONSTANTS, SAMPLE_INPUTS)}
    check_payloads(name, "weight", json_entry(name, WEIGHTS, read[WEIGHTS]), "data/weights/weight_", set(entries))
    check_payloads(name, "constant", json_entry(name, CONSTANTS, read[CONSTANTS]), "data/constants/tensor_",
                   set(entries))
    try:
        load_weights_only(read[SAMPLE_INPUTS])
    except ValueError as err:
        raise DataError(f"{name}: refused: its sample inputs ({SAMPLE_INPUTS}) are {err}, not tensors ({NO_CODE})") \
            from None
    check_program(name, json_entry(name, PROGRAM, read[PROGRAM]))


def json_entry(name: str | Path, entry: str, data: bytes) -> dict:
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise DataError(f"{name}: not a torch.export program mtl can read ({entry} is not a JSON object)")
    return value


def check_payloads(name: str | Path, what: str, config: dict, stored_as: str, entries: set[str]) -> None:
    """Every weight (or constant) of a payload config is raw tensor data in an archive entry named `stored_as` +
    a number, never a pickle."""
    folder, prefix = stored_as.rsplit("/", 1)
    payloads = config.get("config")
    if not isinstance(payloads, dict):
        raise DataError(f"{name}: not a torch.export program mtl can read (its {what}s' config has no 'config')")
    for fqn, meta in payloads.items():
        path = meta.get("path_name") if isinstance(meta, dict) else None
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise DataError(f"{name}: refused: {what} entry {fqn!r} is a pickle, not a tensor ({NO_CODE})")
        if not isinstance(path, str) or not re.fullmatch(re.escape(prefix) + r"\d+", path) or \
                not isinstance(meta.get("tensor_meta"), dict):
            raise DataError(f"{name}: refused: {what} entry {fqn!r} is stored as {path!r}, not as raw tensor data "
                            f"({NO_CODE})")
        if f"{folder}/{path}" not in entries:
            raise DataError(f"{name}: not a torch.export program mtl can read ({what} entry {fqn!r}: no {path})")


def check_program(name: str | Path, program: dict) -> None:
    """The serialised program: no guard code, every node target an operator (`TARGET`), every symbolic expression
    a plain shape formula (`plain_formula`)."""
    if program.get("guards_code"):
        raise DataError(f"{name}: refused: the program carries guard code (Python compiled when it is called; "
                        f"{NO_CODE})")
    stack: list = [program]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key in ("target", "as_operator") and isinstance(item, str) and not TARGET.fullmatch(item):
                    raise DataError(f"{name}: refused: the program calls {item[:80]!r}, not a tensor operator "
                                    f"({NO_CODE})")
                if key == "expr_str" and isinstance(item, str) and not plain_formula(item):
                    raise DataError(f"{name}: refused: symbolic expression {item[:80]!r} is not a plain shape "
                                    f"formula (torch would run it as Python; {NO_CODE})")
                stack.append(item)


def plain_formula(text: str) -> bool:
    """Whether a symbolic expression is a formula over sizes that sympy may parse (it evaluates the string as
    Python): sympy and torch function names, size symbols, numbers, arithmetic and comparisons, assumptions passed
    by keyword; no attribute access, subscripts or other names."""
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
                  if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)]
    except (tokenize.TokenError, SyntaxError):
        return False
    for position, token in enumerate(tokens):
        after = tokens[position + 1].string if position + 1 < len(tokens) else ""
        if not (token.type == tokenize.NUMBER or
                (token.type == tokenize.OP and token.string in FORMULA_OPERATORS) or
                (token.type == tokenize.STRING and FORMULA_STRING.fullmatch(token.string)) or
                (token.type == tokenize.NAME and (token.string in FORMULA_NAMES or SYMBOL.fullmatch(token.string) or
                                                  (after == "=" and KEYWORD.fullmatch(token.string))))):
            return False
    return True
