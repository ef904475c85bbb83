"""The README's promises: its first two commands and its Python example."""

import re

import pytest

from .conftest import REPO

README = (REPO / "README.md").read_text()


def test_readme_starts_with_the_run_and_test_commands():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert "entropix-mlx generate" in first_block[0]
    assert first_block[1] == (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]


@pytest.mark.real_model
def test_python_api_example_runs(default_model, capsys):
    example = re.search(r"## Python API\n\n```python\n(.*?)```", README, re.S).group(1)
    assert len(example.strip().splitlines()) <= 5
    exec(compile(example, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()
