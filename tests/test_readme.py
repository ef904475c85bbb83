"""The documentation's promises: every code block of README.md, docs/*.md and benchmarks/README.md.

Python blocks run, a page's blocks in order in one namespace, on a tiny model (`load` returns it,
the OpenAI client talks to the server app in-process); the README's also run on the real default
model. Shell lines that call `entropix-mlx` parse against the real click CLI (the command and its
options exist, values convert, required options are given; paths need not exist), and the scripts
they name exist with the options given. JSON and TOML blocks parse. `text` blocks are printed output
and are not run.
"""

import dataclasses
import json
import re
import shlex
import tomllib

import click
import pytest

import entropix_mlx
from entropix_mlx.cli import main
from entropix_mlx.loading import DEFAULT_MODEL

from .conftest import REPO
from .tiny import tiny_model, write_float_gguf

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```$", re.M | re.S)
LANGUAGES = ("bash", "python", "json", "toml", "text")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def name(page) -> str:
    return str(page.relative_to(REPO))


def blocks(page, language=None):
    """(line number, language, code) of each fenced block of `page`."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        if language in (None, match.group(1)):
            found.append((line, match.group(1), match.group(2)))
    return found


def cases(language):
    return [
        pytest.param(page, code, id=f"{name(page)}:{line}")
        for page in PAGES
        for line, _, code in blocks(page, language)
    ]


# --- the README itself ---------------------------------------------------------------------


def test_readme_starts_with_the_run_and_test_commands():
    first_block = blocks(README)[0][2].strip().splitlines()
    assert first_block[0] == 'pip install -e . && entropix-mlx generate -p "Why is the sky blue?"'
    assert first_block[1] == (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]


def test_readme_is_short_and_its_links_work_on_pypi():
    """PyPI shows the README as the package's description, where relative links break."""
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    relative = [target for target in LINK.findall(text) if not target.startswith("https://")]
    assert not relative, f"the README links to {relative}: name repository files as plain paths"
    assert "shared/" not in text, "a clone has no ../shared: the README must not need it"


def test_the_pages_the_readme_names_exist():
    named = re.findall(
        r"\b((?:docs|benchmarks)/[\w./-]+\.md|CHANGELOG\.md|LICENSE)\b", README.read_text()
    )
    assert named
    missing = sorted({path for path in named if not (REPO / path).is_file()})
    assert not missing


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_links_between_pages_resolve(page):
    text = page.read_text()
    for target in LINK.findall(text):
        if target.startswith(("https://", "http://")):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{name(page)} links to {target}, which does not exist"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{name(page)} links to {target}: no such heading"


def anchors(page) -> set:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.*)$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_block_names_a_checked_language(page):
    for line, language, _ in blocks(page):
        assert language in LANGUAGES, f"{name(page)}:{line}: a block in {language!r}"


# --- shell commands ------------------------------------------------------------------------


def shell_commands(code):
    """The simple commands of a shell block, each a list of words (comments dropped)."""
    for line in code.replace("\\\n", " ").splitlines():
        command = []
        for word in shlex.split(line, comments=True) + [";"]:
            if word in (";", "&&", "||", "|"):
                if command:
                    yield command
                command = []
            else:
                command.append(word)


def entropix_args(words):
    """The arguments after `entropix-mlx` (or `python -m entropix_mlx`), or None."""
    for i, word in enumerate(words):
        if word == "entropix-mlx":
            return words[i + 1 :]
        if words[i : i + 3] == ["python", "-m", "entropix_mlx"]:
            return words[i + 3 :]
    return None


def parse_cli(args):
    """Parse `args` as the real CLI would, without running the command."""
    command, prog = main, "entropix-mlx"
    while isinstance(command, click.Group):
        if args[:1] in (["--help"], ["-h"], ["--version"]):
            return
        assert args, f"{prog} needs a command"
        sub = command.get_command(click.Context(command), args[0])
        assert sub is not None, f"{prog} has no command {args[0]!r}"
        command, prog, args = sub, f"{prog} {args[0]}", args[1:]
    try:
        command.make_context(prog, list(args))
    except click.UsageError as e:
        pytest.fail(f"{prog} {shlex.join(args)}: {e.format_message()}")


def all_commands(command):
    yield command
    for sub in getattr(command, "commands", {}).values():
        yield from all_commands(sub)


@pytest.fixture
def paths_need_not_exist(monkeypatch):
    for command in all_commands(main):
        for param in command.params:
            if isinstance(param.type, click.Path) and param.type.exists:
                monkeypatch.setattr(param.type, "exists", False)


def check_script(words):
    """A repository script named in a command exists and knows the options given to it."""
    for i, word in enumerate(words):
        if word.endswith(".py") and "/" in word:
            script = REPO / word
            assert script.is_file(), f"no script {word}"
            source = script.read_text()
            for option in (w.split("=")[0] for w in words[i + 1 :] if w.startswith("--")):
                assert f'"{option}"' in source, f"{word} has no option {option}"


@pytest.mark.parametrize("page, code", cases("bash"))
def test_shell_commands_parse(page, code, paths_need_not_exist):
    for words in shell_commands(code):
        args = entropix_args(words)
        if args is not None:
            parse_cli(args)
        check_script(words)


def test_the_command_check_catches_mistakes(paths_need_not_exist):
    parse_cli(["generate", "-p", "hi", "--config", "absent.toml", "-n", "2"])
    for wrong in (["generate", "--promt", "hi"], ["eval", "--limit", "3"], ["bench", "-n", "x"]):
        with pytest.raises(pytest.fail.Exception):
            parse_cli(wrong)
    with pytest.raises(AssertionError):
        parse_cli(["modles", "list"])


# --- data blocks ---------------------------------------------------------------------------


@pytest.mark.parametrize("page, code", cases("json"))
def test_json_blocks_parse(page, code):
    json.loads(code)


@pytest.mark.parametrize("page, code", cases("toml"))
def test_toml_blocks_parse(page, code):
    tomllib.loads(code)


# --- Python blocks -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, tokenizer, info) of a tiny random model whose pause token is one token."""
    path = write_float_gguf(tmp_path_factory.mktemp("docs") / "tiny.gguf", tiny_model(seed=3))
    model, tokenizer, info = entropix_mlx.load(str(path))
    return model, tokenizer, dataclasses.replace(info, sampler_preset={"pause_token": "."})


def run_python(page, namespace):
    for line, _, code in blocks(page, "python"):
        exec(compile(code, f"{name(page)}:{line}", "exec"), namespace)


def serve_openai_in_process(monkeypatch, loaded):
    """OpenAI clients made from now on talk to the server app in this process."""
    openai = pytest.importorskip("openai")
    from starlette.testclient import TestClient

    from entropix_mlx.server import create_app

    client = TestClient(create_app(*loaded, max_tokens_limit=64))
    client.__enter__()  # starts the app's worker
    original = openai.OpenAI
    monkeypatch.setattr(openai, "OpenAI", lambda **kw: original(**kw, http_client=client))
    return client


PYTHON_PAGES = [page for page in PAGES if blocks(page, "python")]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=name)
def test_python_blocks_run_on_a_tiny_model(page, tiny, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(entropix_mlx, "load", lambda *args, **kwargs: tiny)
    server = serve_openai_in_process(monkeypatch, tiny) if "openai" in page.read_text() else None
    try:
        run_python(page, {"__name__": "__docs__"})
    finally:
        if server is not None:
            server.__exit__(None, None, None)


@pytest.mark.real_model
def test_readme_python_runs_on_the_default_model(default_model, monkeypatch, tmp_path, capsys):
    def load(name=DEFAULT_MODEL, **kwargs):
        assert name == DEFAULT_MODEL and not kwargs
        return default_model  # loaded once per session

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(entropix_mlx, "load", load)
    namespace = {"__name__": "__docs__"}
    run_python(README, namespace)
    assert capsys.readouterr().out.strip()
    texts = namespace["texts"]  # the batch example: chat messages get answers, not continuations
    assert len(texts) == 2 and all(text.strip() and not text[0].isspace() for text in texts), texts
