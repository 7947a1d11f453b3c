"""The docs name only what exists: config keys, command-line flags, config files, modules, links, the layout.

README.md and docs/*.md are where a newcomer learns the commands, and they drifted from the code before:
keys moved between config sections, config files were merged, modules moved into packages, and nothing
noticed. These tests read the docs as text and check every such name against the code, so a stale one
fails here, named with the doc that holds it. They train nothing and start no process.

What counts as a name:
  - a config key: `config.KEY` and `--config.KEY=...` anywhere, `--override=KEY=...` in a command, and a
    code span that starts with a config section (`classification.fusion`, `missing.*`). It exists if some
    task's schema has it (`mmlearn.config.schema.get_config(task)` over every registered task), or if it
    lies under a sub-tree whose keys are the user's (`schema.FREE_FORM`). `<name>`, `*` and upper-case
    words (`KEY`, `N`) are placeholders.
  - a flag: `--NAME` after `mmlearn.main`, `main` or `scripts/NAME.py` in a command line (a code line,
    with its `\\` continuations, or a code span). The entry point must define it (`DEFINE_*("NAME"` or
    argparse's `add_argument("--NAME"`), or absl must (`--verbosity`, `--helpfull`).
  - a config file: `configs/....py` anywhere; `{a,b}` and `*` are expanded. A `--config=` or `--configs=`
    spec in a command is also loaded (`FILE:ARG` as `--config` loads it), and the command's
    `--config.KEY` overrides must be keys of that config, as `mmlearn.main` would require.
  - a module: `mmlearn/....py` or `scripts/....py`, and `path::name` must define `name`.
  - an evaluator entry: a concrete `{"type": ..., "split": "...", ...}` names a registered type and its
    options.
  - a relative link, with its `#anchor` if it has one.
  - the README's code layout: one line per folder of `mmlearn/`, and one line of its top-level modules.
"""

import csv
import functools
import glob
import pathlib
import re

import ml_collections
import pytest
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = sorted(path.stem for path in (ROOT / "scripts").glob("*.py"))
# File names that look like config keys (`config.json`, `retrieval.py`): not keys.
FILE_SUFFIXES = {"py", "json", "jsonl", "md", "csv", "png", "txt", "gz", "safetensors", "model"}

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`((?:[^`\n]|\n(?![ \t]*\n))+)`")  # Inline code, possibly over a line break.
CONFIG_KEY = re.compile(r"(?<![\w./$])(?:--)?config\.([\w<>*]+(?:\.[\w<>*]+)*)(\()?")
OVERRIDE = re.compile(r"--override=([\w.<>]+)=")
FLAG = re.compile(r"(?<![\w-])--([A-Za-z][\w-]*)")
CONFIG_SPEC = re.compile(r"--config=(\S+)")
CONFIGS_LIST = re.compile(r"--configs=(\S+)")
CONFIG_PATH = re.compile(r"(?<![\w/.$-])configs/[\w/*{},-]*\.py\b")
MODULE_PATH = re.compile(r"(?<![\w/.-])((?:mmlearn|scripts)/[\w/]+\.py)(?:::(\w+))?")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def rel(doc: pathlib.Path) -> str:
  return str(doc.relative_to(ROOT))


def doc_ids() -> list[str]:
  return [rel(doc) for doc in DOCS]


@functools.cache
def read(doc: pathlib.Path) -> str:
  return doc.read_text()


def code_blocks(text: str) -> list[str]:
  return FENCE.findall(text)


def code_spans(text: str) -> list[str]:
  """Inline code spans outside fenced blocks."""
  return [span.replace("\n", " ") for span in SPAN.findall(FENCE.sub("", text))]


def command_lines(text: str) -> list[str]:
  """Every line of code (continuations joined, shell prompt and comments dropped) and every code span,
  split into the commands a shell would run one after another."""
  lines = []
  for block in code_blocks(text):
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
      line = re.sub(r"(^|\s)#.*$", "", line.strip().removeprefix("$ "))
      lines.append(line)
  lines += code_spans(text)
  return [part for line in lines for part in re.split(r"\s(?:&&|\|\||\||;)\s|;\s", line) if part.strip()]


def entry_point(command: str) -> tuple[str, str] | None:
  """(entry point, the text after it) of a command running `mmlearn.main` or a script, else None."""
  match = re.search(r"\bmmlearn\.main\b|^main(?=\s+--)", command)
  if match:
    return "main", command[match.end() :]
  for match in re.finditer(r"(?<![\w.-])(?:scripts/)?(\w+)\.py\b", command):
    if match.group(1) in SCRIPTS:
      return match.group(1), command[match.end() :]
  return None


def is_placeholder(part: str) -> bool:
  return part in ("*", "...") or part.startswith("<") or (part.isupper() and part.isalpha())


# --- The schema: every key of every task ----------------------------------------------------------------


@functools.cache
def schema() -> tuple[frozenset[str], tuple[str, ...], frozenset[str]]:
  """(every dotted key and sub-tree of the union over tasks, the free-form sub-trees, the sections)."""
  from mmlearn.config.schema import FREE_FORM, get_config
  from mmlearn.tasks.registry import TASKS

  known: set[str] = set()
  sections: set[str] = set()

  def walk(tree: ml_collections.ConfigDict, prefix: str) -> None:
    for key, value in tree.items():
      path = f"{prefix}{key}"
      known.add(path)
      if isinstance(value, ml_collections.ConfigDict):
        if not prefix:
          sections.add(path)
        if path not in FREE_FORM:
          walk(value, f"{path}.")

  for task in TASKS.names():
    walk(get_config(task), "")
  return frozenset(known), tuple(FREE_FORM), frozenset(sections)


def key_exists(key: str) -> bool:
  known, free_form, _ = schema()
  parts = key.split(".")
  for i in range(1, len(parts) + 1):
    prefix = ".".join(parts[:i])
    if prefix in free_form:
      return True
    if is_placeholder(parts[i - 1]):
      return True  # Any key of a section that exists (checked by the previous part).
    if prefix not in known:
      return False
  return True


def named_keys(text: str) -> set[str]:
  """Every config key the doc names (see the module docstring)."""
  keys = set()
  for match in CONFIG_KEY.finditer(text):
    key = match.group(1)
    if match.group(2):  # `config.optimizer.update(...)`: a method of the ConfigDict, not a key.
      key = key.rpartition(".")[0]
    if key:
      keys.add(key)
  for command in command_lines(text):
    keys.update(OVERRIDE.findall(command))
  _, _, sections = schema()
  section = "|".join(sorted(sections, key=len, reverse=True))
  for span in code_spans(text):
    match = re.match(rf"^((?:{section})(?:\.[\w<>*]+)+)(?=$|\s|=|,)", span)
    if match:
      keys.add(match.group(1))
  return {key for key in keys if key.split(".")[-1] not in FILE_SUFFIXES and not is_placeholder(key)}


@pytest.mark.parametrize("doc", DOCS, ids=doc_ids())
def test_every_config_key_in_the_docs_exists(doc):
  stale = sorted(key for key in named_keys(read(doc)) if not key_exists(key))
  assert not stale, (
    f"{rel(doc)} names config keys that no task's schema has (mmlearn/config/schema.py and each task's "
    f"config_sections): {', '.join(stale)}"
  )


# --- Flags of the entry points ---------------------------------------------------------------------------


# absl's flags that `app.run` defines late (help) or its parser handles itself (flagfile, undefok).
ABSL_SPECIAL = ("help", "helpshort", "helpfull", "helpxml", "flagfile", "undefok")


@functools.cache
def absl_flags() -> frozenset[str]:
  """The flags absl itself gives every program (--verbosity or -v, --logtostderr, --helpfull, ...)."""
  from absl import app, logging  # noqa: F401  (define them)

  by_module = flags.FLAGS.flags_by_module_dict()
  defined = [f for module, fs in by_module.items() if module.startswith("absl") for f in fs]
  return frozenset(
    [f.name for f in defined] + [f.short_name for f in defined if f.short_name] + [*ABSL_SPECIAL]
  )


@functools.cache
def defined_flags(entry: str) -> frozenset[str]:
  source = (ROOT / ("mmlearn/main.py" if entry == "main" else f"scripts/{entry}.py")).read_text()
  names = set(re.findall(r"DEFINE_\w*\(\s*\"(\w+)\"", source))
  names |= set(re.findall(r"add_argument\(\s*\"--([\w-]+)\"", source))
  return frozenset(names)


def flag_defined(entry: str, name: str) -> bool:
  if entry == "main" and name.startswith("config."):
    return True  # A config key: the key test checks it.
  names = defined_flags(entry) | absl_flags()
  return name in names or (name.startswith("no") and name[2:] in names)


def commands(text: str) -> list[tuple[str, str]]:
  return [found for command in command_lines(text) if (found := entry_point(command))]


@pytest.mark.parametrize("doc", DOCS, ids=doc_ids())
def test_every_flag_of_a_documented_command_is_defined(doc):
  stale = set()
  for entry, rest in commands(read(doc)):
    for name in FLAG.findall(rest):
      name = name.split("=")[0]
      if not flag_defined(entry, name):
        where = "mmlearn/main.py" if entry == "main" else f"scripts/{entry}.py"
        stale.add(f"--{name} ({where} defines no such flag)")
  assert not stale, f"{rel(doc)} runs commands with flags their entry point lacks: {', '.join(sorted(stale))}"


# --- Config files -----------------------------------------------------------------------------------------


def expand(path: str) -> list[str]:
  """`configs/flow/{a,b}.py` -> the two paths."""
  match = re.search(r"\{([^}]*)\}", path)
  if not match:
    return [path]
  return [p for choice in match.group(1).split(",") for p in expand(path.replace(match.group(0), choice, 1))]


@pytest.mark.parametrize("doc", DOCS, ids=doc_ids())
def test_every_config_file_in_the_docs_exists(doc):
  missing = sorted(
    path
    for named in set(CONFIG_PATH.findall(read(doc)))
    for path in expand(named)
    if not glob.glob(str(ROOT / path))
  )
  assert not missing, f"{rel(doc)} names config files that do not exist: {', '.join(missing)}"


def config_specs(rest: str) -> list[str]:
  """The `FILE[:ARG]` specs a command loads: `--config=` (main, sweep.py, benchmark.py) and `--configs=`
  (results.py, a comma-separated list read as absl reads it, quotes and all)."""
  specs = CONFIG_SPEC.findall(rest)
  for listed in CONFIGS_LIST.findall(rest):
    specs += next(csv.reader([listed.strip("'")]))
  return [spec.strip("'\"") for spec in specs]


def settable(config: ml_collections.ConfigDict, key: str) -> bool:
  """Whether `--config.KEY=...` can set `key` of this (locked) config: every part of the path exists."""
  node = config
  for part in key.split("."):
    if is_placeholder(part):
      return True
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


@pytest.mark.parametrize("doc", DOCS, ids=doc_ids())
def test_every_documented_config_spec_loads_with_its_overrides(doc, monkeypatch):
  from mmlearn.config import files as config_files

  monkeypatch.chdir(ROOT)  # The docs' commands run from the repository root.
  problems = []
  for entry, rest in commands(read(doc)):
    for spec in config_specs(rest):
      if not spec.startswith("configs/") or any(c in spec for c in "$<"):
        continue  # A file of the reader's own ($DEMO/...) or a placeholder.
      try:
        config = config_files.get_config(spec)
      except Exception as e:  # The doc's command would fail the same way.
        problems.append(f"{spec} does not load ({type(e).__name__}: {e})")
        continue
      if entry != "main":
        continue
      for key in re.findall(r"--config\.([\w.<>]+)=", rest):
        if not settable(config, key):
          problems.append(f"{spec} has no key {key!r} for --config.{key}")
  assert not problems, f"{rel(doc)}: {'; '.join(problems)}"


# --- Evaluator entries ------------------------------------------------------------------------------------

EVAL_ENTRY = re.compile(r"\{[^{}]*\"type\":\s*\"(\w+)\"[^{}]*\}")


@pytest.mark.parametrize("doc", DOCS, ids=doc_ids())
def test_every_documented_evaluator_entry_is_registered(doc):
  """A concrete `config.evals` entry (`{"type": "coherence", "split": "validation", ...}`) names a
  registered evaluator type and only options that type takes."""
  import mmlearn.evaluators  # noqa: F401  (registers them)
  from mmlearn.evaluators.registry import EVALUATORS, SCHEDULE_KEYS

  stale = []
  for entry in EVAL_ENTRY.finditer(read(doc).replace("\n", " ")):
    if not re.search(r"\"split\":\s*\"", entry.group(0)):
      continue  # A schema, not an example: `{"type": "name", "split": ...}`.
    kind = entry.group(1)
    if kind not in EVALUATORS.names():
      stale.append(f"type {kind!r} (registered: {', '.join(EVALUATORS.names())})")
      continue
    options = set(re.findall(r"\"(\w+)\":", entry.group(0))) - set(SCHEDULE_KEYS)
    unknown = sorted(options - set(EVALUATORS.get(kind).options))
    if unknown:
      stale.append(f"{kind!r} options {unknown} (it takes {EVALUATORS.get(kind).options})")
  assert not stale, f"{rel(doc)} names evaluator entries that do not exist: {'; '.join(stale)}"


# --- Modules and links ------------------------------------------------------------------------------------


def defines(source: str, name: str) -> bool:
  return bool(re.search(rf"^\s*(?:def|class)\s+{name}\b|^{name}\s*[:=]", source, re.M))


@pytest.mark.parametrize("doc", DOCS, ids=doc_ids())
def test_every_module_path_in_the_docs_exists(doc):
  """`mmlearn/x/y.py` and `mmlearn/x/y.py::name` name a file of the tree and something it defines."""
  stale = set()
  for path, name in MODULE_PATH.findall(read(doc)):
    if not (ROOT / path).is_file():
      stale.add(f"{path} (no such file)")
    elif name and not defines((ROOT / path).read_text(), name):
      stale.add(f"{path}::{name} (not defined there)")
  assert not stale, f"{rel(doc)} names modules that do not exist: {', '.join(sorted(stale))}"


def slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=doc_ids())
def test_every_relative_link_resolves(doc):
  broken = []
  for target in LINK.findall(FENCE.sub("", read(doc))):
    if re.match(r"^[a-z]+:", target):
      continue  # https:, mailto:
    path, _, anchor = target.partition("#")
    file = (doc.parent / path).resolve() if path else doc
    if not file.exists():
      broken.append(f"{target} (no file {path})")
    elif anchor and file.suffix == ".md":
      headings = re.findall(r"^#+ (.+)$", FENCE.sub("", read(file)), re.M)
      if anchor not in {slug(h) for h in headings}:
        broken.append(f"{target} (no heading #{anchor})")
  assert not broken, f"{rel(doc)} has broken links: {', '.join(broken)}"


# --- The README's code layout -----------------------------------------------------------------------------


def layout_lines() -> list[str]:
  """The lines of the first code block under the README's `## Code layout`, below its `mmlearn/` line."""
  section = read(ROOT / "README.md").split("\n## Code layout", 1)
  assert len(section) == 2, "README.md has no '## Code layout' section"
  blocks = code_blocks(section[1].split("\n## ", 1)[0])
  assert blocks, "README.md's code layout section has no code block"
  lines = blocks[0].splitlines()
  assert lines and lines[0].strip() == "mmlearn/", "README.md's code layout block must start with 'mmlearn/'"
  return [line for line in lines[1:] if line.strip()]


FOLDER_LINE = re.compile(r"^\s+(\w+)/(\s|$)")
MODULES_LINE = re.compile(r"^\s+\w+\.py\b")


def test_the_readme_layout_has_one_line_per_folder_and_one_of_modules():
  other = [line for line in layout_lines() if not (FOLDER_LINE.match(line) or MODULES_LINE.match(line))]
  assert not other, f"README.md's code layout has lines that are neither a folder nor the modules: {other}"


def test_the_readme_layout_lists_every_folder_of_the_package_once():
  listed = [m.group(1) for line in layout_lines() if (m := FOLDER_LINE.match(line))]
  actual = sorted(
    p.name for p in (ROOT / "mmlearn").iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
  )
  assert sorted(listed) == actual, (
    f"README.md's code layout lists the folders {sorted(listed)}, but mmlearn/ has {actual} "
    "(one line per folder, each once)"
  )


def test_the_readme_layout_lists_the_top_level_modules():
  module_lines = [line for line in layout_lines() if MODULES_LINE.match(line)]
  assert len(module_lines) == 1, (
    f"README.md's code layout needs one line of top-level modules: {module_lines}"
  )
  listed = re.findall(r"\b(\w+\.py)\b", module_lines[0])
  actual = sorted(p.name for p in (ROOT / "mmlearn").glob("*.py") if p.name != "__init__.py")
  assert sorted(listed) == actual, (
    f"README.md's code layout lists the top-level modules {sorted(listed)}, but mmlearn/ has {actual}"
  )
