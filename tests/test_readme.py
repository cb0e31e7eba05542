"""README.md as a newcomer runs it: the quick start's commands exist as written, every job
command's flags are the job's own (``--help``), and every HTTP example's body is one the app
accepts, sending no option its sampler ignores."""

import json
import re
import shlex
import subprocess
import sys

import pytest

from hw4 import samplers
from serve.schemas import DDPMSampleIn

from .conftest import ROOT

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n#", start + 3)
    return README[start:end if end > 0 else None]


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def commands(text: str) -> list[str]:
    """Each command of the fenced shell blocks: continuation lines joined, comments dropped."""
    out = []
    for block in shell_blocks(text):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = re.sub(r"(^|\s)#.*$", "", cmd).strip()
            if cmd:
                out.append(cmd)
    return out


def test_the_quick_start_names_python_3_11_and_runs_what_the_makefile_and_the_venv_provide():
    quick = section("Quick start")
    assert "Python 3.11" in quick and "pyenv install 3.11" in quick
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"(?m)^([a-z]+):", makefile))
    cmds = commands(quick)
    assert cmds[:2] == ["make demo", "make test"]  # the two commands, first
    for cmd in cmds:
        words = shlex.split(cmd)
        if words[0] == "make":
            assert set(words[1:]) <= targets, cmd
        elif words[0] == "source":
            assert words[1] == ".venv/bin/activate" and "VENV   := .venv" in makefile
        else:
            pytest.fail(f"a quick-start command this test does not know: {cmd}")


JOB = re.compile(r"(?:^|\s)python (jobs/\w+\.py|-m jobs\.\w+)((?:\s+[^|&;]*)?)")


def job_commands() -> dict[str, set[str]]:
    """Every job script README runs, with the flags it passes anywhere."""
    found: dict[str, set[str]] = {}
    for cmd in commands(README):
        for script, rest in JOB.findall(cmd):
            module = script.replace("/", ".").removesuffix(".py").removeprefix("-m ")
            found.setdefault(module, set()).update(re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", rest))
    return found


@pytest.mark.parametrize("module, flags", sorted(job_commands().items()))
def test_every_job_command_passes_only_flags_the_job_has(module, flags):
    helptext = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert helptext.returncode == 0, helptext.stderr[-2000:]
    known = set(re.findall(r"(--[a-z][a-z0-9-]*)", helptext.stdout))
    assert flags <= known, f"{module}: {sorted(flags - known)} not in --help"


def http_bodies() -> list[tuple[str, dict]]:
    bodies = []
    for cmd in commands(README):
        route = re.search(r"localhost:8000(/[\w/-]+)", cmd)
        body = re.search(r"-d '(\{.*?\})'", cmd)
        if route and body:
            bodies.append((route.group(1), json.loads(body.group(1))))
    return bodies


def test_the_http_examples_send_bodies_the_app_accepts():
    bodies = http_bodies()
    ddpm = [b for route, b in bodies if route.startswith("/ddpm/sample")]
    assert len(ddpm) >= 3, bodies
    for body in ddpm:
        req = DDPMSampleIn(**body).request()  # raises on a body the app refuses
        if "eta" in body:
            assert samplers.kind(req.sampler).uses_eta, f"{body}: {req.sampler} ignores eta"
