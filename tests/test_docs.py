"""The manual cannot drift: every relative link and #anchor in README.md and docs/ resolves, every `leukexp-train`
line in their code blocks composes (or says what it needs), and the configuration page is what the configs and the
schema say. Each check is shown failing once on a page written to fail it."""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
MARKER = "needs"  # a line's comment starting with it: the line needs files or engines, it is not composed
LEFT_OUT = ("-m", "--multirun", "--cfg", "job", "hydra", "all", "--info")


def prose(text: str) -> str:
    """The text outside code blocks and inline code (where a `[x](y)` is not a link)."""
    kept, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
            continue
        if not fence:
            kept.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(kept)


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it (and the site, configured alike): lower case, punctuation dropped,
    spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in prose(path.read_text()).splitlines() if re.match(r"#{1,6} ", line)}


def broken_links(path: Path) -> list[str]:
    """Relative links of a page whose file or #anchor does not exist."""
    broken = []
    for target in LINK.findall(prose(path.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{path.name}: {target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{path.name}: {target} (no such heading)")
    return broken


@dataclass
class TrainLine:
    page: str
    line: int
    args: list[str]
    needs: bool

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: leukexp-train {' '.join(self.args)}"


def train_lines(path: Path) -> list[TrainLine]:
    """Every `leukexp-train ...` command in the page's code blocks (continued lines joined)."""
    found, fence, pending, start = [], None, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if fence not in ("bash", "sh", "console", ""):  # prose, or another language's block
            continue
        if not pending:
            start = number
        text = pending + " " + line.strip() if pending else line
        if text.rstrip().endswith("\\"):
            pending = text.rstrip()[:-1]
            continue
        pending = ""
        if "leukexp-train" not in text:
            continue
        command, _, comment = text.partition(" #")
        first = next((w for w in command.split() if "=" not in w), "")  # after VAR=value assignments
        if not first.endswith("leukexp-train"):  # named in a comment, a tree or another command, not run
            continue
        words = shlex.split(command)
        args = words[[w.endswith("leukexp-train") for w in words].index(True) + 1:]
        found.append(TrainLine(path.name, start, args, comment.strip().startswith(MARKER)))
    return found


def compose_line(args: list[str]) -> None:
    """Compose `train.yaml` as the line would (a sweep with its first choice; a search dimension's key must exist;
    every option of a swept group must exist). Raises what Hydra raises for a stale override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from leukexp.config.compose import compose_train, group_options
    from leukexp.config.identity import config_groups

    if "..." in args:
        raise ValueError("'...' stands for more overrides: write them out or mark the line '# needs ...'")
    overrides = [a for a in args if a not in LEFT_OUT]
    single, dimensions = [], []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            single.append(override.input_line)
        elif override.is_choice_sweep():
            choices = [str(v) for v in override.sweep_string_iterator()]
            if key in config_groups():
                unknown = [c for c in choices if c not in group_options(key)]
                if unknown:
                    raise ValueError(f"{key}={','.join(unknown)}: no such option of {key}")
            single.append(f"{key}={choices[0]}")
        else:
            dimensions.append(key)
    composed = compose_train(single, return_hydra_config=True)
    for key in dimensions:
        if OmegaConf.select(composed, key, default="<missing>") == "<missing>":
            raise ValueError(f"{key}: no such config key to search over")


def test_every_link_and_anchor_of_the_manual_resolves() -> None:
    assert [broken for page in PAGES for broken in broken_links(page)] == []


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## Real heading: with, punctuation\n")
    page.write_text("# Page\n\n[ok](other.md#real-heading-with-punctuation) [gone](nowhere.md) "
                    "[stale](other.md#old-heading) [self](#page) `[code](not-a-link.md)`\n")
    assert broken_links(page) == ["page.md: nowhere.md (no such file)", "page.md: other.md#old-heading (no such"
                                  " heading)"]


def test_the_manual_has_train_lines_and_the_marked_ones_say_what_they_need() -> None:
    lines = [line for page in PAGES for line in train_lines(page)]
    assert len(lines) >= 40, "the pages' commands were found"
    for line in lines:
        if line.needs:
            assert "..." in line.args or any("/" in a for a in line.args), f"{line}: marked but needs nothing"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_train_line_of_a_page_composes(page: Path) -> None:
    from hydra import initialize_config_dir

    from leukexp.config.compose import config_dir

    failures = []
    with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="leukexp"):  # once for the page
        for line in train_lines(page):
            if line.needs:
                continue
            try:
                compose_line(line.args)
            except Exception as error:  # Hydra's errors for a stale key or option, ours for a sweep
                failures.append(f"{line}\n    {type(error).__name__}: {str(error).splitlines()[0]}")
    assert failures == [], "\n".join(failures)


def test_a_stale_override_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```bash\nleukexp-train head=mlp1 head.nope=3\nleukexp-train -m head=mlp1,gone\n"
                    "leukexp-train -m hydra/sweeper=optuna 'head.nope=interval(0,1)'\n"
                    "leukexp-train -m hydra/launcher=slurm ... head=mlp1   # needs a Slurm cluster\n```\n")
    lines = train_lines(page)
    assert [line.needs for line in lines] == [False, False, False, True]
    for line in lines[:3]:
        with pytest.raises(Exception, match=r"nope|gone"):
            compose_line(line.args)
    with pytest.raises(ValueError, match=r"'\.\.\.' stands for more overrides"):
        compose_line(lines[3].args)


def test_the_configuration_page_is_what_the_configs_and_schema_say(monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import config_reference

    from leukexp.config import schema
    from leukexp.config.compose import group_options
    from leukexp.config.identity import config_groups

    text = (ROOT / "docs" / "configuration.md").read_text()
    assert text == config_reference.page(), "stale: run python scripts/config_reference.py"
    for group in config_groups():
        for option in group_options(group):
            assert f"| `{group}` | `{option}` |" in text
    for key in schema.SCHEMA:
        assert f"| `{key.key}` |" in text
    monkeypatch.setattr(schema, "SCHEMA", (*schema.SCHEMA, schema.Key("head.undocumented")))
    monkeypatch.setattr(config_reference, "SCHEMA", schema.SCHEMA)
    assert config_reference.page() != text, "an undocumented key makes the page stale"


def test_the_layout_page_names_every_module_and_script() -> None:
    text = (ROOT / "docs" / "layout.md").read_text()
    modules = [p for p in (ROOT / "leukexp").rglob("*.py") if p.name != "__init__.py"]
    scripts = [p for p in (ROOT / "scripts").rglob("*") if p.is_file() and p.name != "__init__.py"
               and "__pycache__" not in p.parts]
    assert len(modules) > 50 and scripts
    missing = [str(p.relative_to(ROOT)) for p in [*modules, *scripts] if p.name not in text]
    assert missing == [], f"docs/layout.md does not name {missing}"
