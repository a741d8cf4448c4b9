"""The documentation's generated reference pages: current, complete, independent of the terminal; the site's nav
and the committed docs/ pages agree (the site itself is built by .ci/run, `mkdocs build --strict`)."""

import importlib
import re
from pathlib import Path

import click
import pytest
import yaml
from pydantic import BaseModel

from mtl import reference
from mtl.cli import main as mtl
from mtl.config_schema import Config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


class _AnyTagLoader(yaml.SafeLoader):
    """SafeLoader that reads a node with a tag it does not know (`!!python/name:...`) as None."""


_AnyTagLoader.add_multi_constructor("", lambda loader, suffix, node: None)


def nav_files(entries) -> list[str]:
    found = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        found += nav_files(value) if isinstance(value, list) else [value]
    return found


def config_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += config_keys(field.annotation, f"{prefix}{name}.")
        else:
            out.append((prefix + name, field))
    return out


def command_paths(command: click.Command = mtl, path: str = "mtl") -> list[tuple[str, click.Command]]:
    out = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        out += command_paths(sub, f"{path} {name}")
    return out


def row(page: str, first_cell: str) -> str:
    """The table row of `page` whose first cell is `first_cell`."""
    rows = [line for line in page.splitlines() if line.startswith(f"| {first_cell} |")]
    assert rows, f"no row {first_cell!r}"
    return rows[0]


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return {name: page() for name, page in reference.PAGES.items()}


@pytest.mark.parametrize("name", sorted(reference.PAGES))
def test_the_committed_page_is_what_the_code_generates(name, pages):
    committed = DOCS / "reference" / name
    if not committed.is_file() or committed.read_text() != pages[name]:
        pytest.fail(f"docs/reference/{name} is stale: run `{reference.REGENERATE}`")


def test_every_config_key_has_its_row_with_type_default_and_description(pages):
    page = pages["config.md"]
    for dotted, field in config_keys():
        line = row(page, f"`{dotted}`")
        if field.description:
            assert field.description.split()[0].lstrip("(") in line, dotted
    assert "one of `mixed`, `per_task`" in row(page, "`data.batch_mode`")
    assert "≥ 8" in row(page, "`data.image_size`") and "`112`" in row(page, "`data.image_size`")
    assert "`[0.9, 0.999]`" in row(page, "`train.betas`")
    assert "str or null" in row(page, "`model.weights`") and "`null`" in row(page, "`model.weights`")
    assert "`''`" in row(page, "`data.shards`")
    assert "abaw2020 (8 AUs, 7 expressions) \\| abaw3" in row(page, "`data.protocol`")  # a pipe kept in its cell
    assert "## `data.downsample` {#data-downsample}" in page


def test_the_presets_table_shows_what_each_preset_sets(pages):
    presets = pages["config.md"].split("## Presets", 1)[1]
    backbone = row(presets, "`model.backbone`").split(" | ")
    assert backbone[1:] == ["`test_resnet`", "`test_resnet`", "`resnet50_ferplus`", "`resnet50_ferplus` |"]
    assert row(presets, "`data.protocol`").split(" | ")[-1] == "`abaw3` |"  # abaw3 alone sets it
    assert "`{Neutral: 10, Happiness: 2, Sadness: 2}`" in row(presets, "`data.downsample.expr`")
    assert "| `train.compile` |" not in presets  # no preset sets it


def test_every_command_and_option_is_on_the_cli_page(pages):
    page = pages["cli.md"]
    for path, command in command_paths():
        sections = re.findall(rf"^#+ {re.escape(path)} {{#{path.replace(' ', '-')}}}\n(.*?)(?=^#+ mtl|\Z)", page,
                              re.M | re.S)
        assert len(sections) == 1, path
        assert f"```text\n{path} [OPTIONS]" in sections[0], path
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert f"| `{', '.join(param.opts)}" in sections[0], (path, param.opts)
    assert "### mtl bench gpu {#mtl-bench-gpu}" in page
    assert "`RAY_ADDRESS`" in row(page.split("## mtl train ", 1)[1], "`--address`")
    assert "required" in row(page.split("## mtl predict ", 1)[1], "`--model`")


def test_the_cli_page_does_not_depend_on_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = reference.cli_reference()
    monkeypatch.setenv("COLUMNS", "300")
    assert reference.cli_reference() == narrow


def test_markdown_escaping_keeps_code_spans():
    assert reference.escaped("a | b <c> `x|*y` *z [d]", table=True) == r"a \| b &lt;c> `x|*y` \*z \[d]"
    assert reference.escaped("one ` backtick <b>") == "one ` backtick &lt;b>"
    assert reference.escaped("two\n  lines", table=True) == "two lines"


def test_write_puts_every_page_in_the_folder(tmp_path, pages, capsys):
    reference.main(["--write", str(tmp_path / "ref")])
    assert {p.name: p.read_text() for p in (tmp_path / "ref").iterdir()} == pages
    assert capsys.readouterr().out.count("\n") == len(pages)


def test_the_nav_and_the_docs_folder_agree():
    site = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_AnyTagLoader)
    listed = nav_files(site["nav"])
    assert len(listed) == len(set(listed))
    missing = [name for name in listed if not (DOCS / name).is_file()]
    assert missing == [], "in mkdocs.yml's nav, not in docs/"
    unlisted = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if str(p.relative_to(DOCS)) not in listed)
    assert unlisted == [], "in docs/, not in mkdocs.yml's nav"
    assert {"reference/config.md", "reference/cli.md", "reference/api.md"} <= set(listed)


def test_the_api_page_names_importable_objects():
    names = re.findall(r"^::: ([\w.]+)", (DOCS / "reference" / "api.md").read_text(), re.M)
    assert "mtl.metrics" in names
    for name in names:
        module, _, attribute = name.rpartition(".")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            assert hasattr(importlib.import_module(module), attribute), name
