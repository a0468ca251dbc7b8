"""Every `python <entry>.py ...` command the README shows composes and passes the config check,
so a renamed key cannot leave a broken example behind."""

from __future__ import annotations

import re
import shlex

import pytest
from hydra import compose, initialize_config_dir

from face_rec.config_check import check_config

from .conftest import REPO

ENTRIES = {"train.py": "train", "eval_lfw.py": "eval_lfw", "align.py": "align"}
ENTRIES |= {"export.py": "export", "embed.py": "embed", "eval_ijb.py": "eval_ijb"}
ENTRIES |= {"identify.py": "identify"}


def readme_commands() -> list[str]:
    """Shell lines of the README's bash blocks (continuations joined) that run an entry point."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    lines = [ln.split(" #")[0].strip() for ln in text.splitlines()]
    return [ln for ln in lines if any(f" {e}" in f" {ln}" for e in ENTRIES)]


def _overrides(tokens: list[str]) -> list[str]:
    out = []
    for t in tokens:
        if "=" not in t or t.startswith("-"):
            continue
        key, value = t.split("=", 1)
        if "..." in value or "<" in value:  # a placeholder: any path stands in for it
            value = "/tmp/placeholder"
        elif "," in value and not value.startswith("["):  # a sweep: its first value
            value = value.split(",")[0]
        out.append(f"{key}={value}")
    return out


COMMANDS = readme_commands()


def test_the_readme_shows_commands_of_every_entry_point():
    shown = {e for c in COMMANDS for e in ENTRIES if e in c}
    assert shown == set(ENTRIES)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_composes_and_checks(command):
    if "hydra/launcher=slurm" in command:  # needs the [sweep] extra's launcher plugin
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    tokens = shlex.split(command)
    script = next(t for t in tokens if t in ENTRIES)
    overrides = _overrides(tokens[tokens.index(script) + 1 :])
    if script == "embed.py":
        overrides = [
            *overrides,
            *(
                o
                for o in ("checkpoint=/c.pt", "input_dir=/p")
                if o.split("=")[0] not in {x.split("=")[0] for x in overrides}
            ),
        ]
    if script == "export.py" and not any(o.startswith("checkpoint=") for o in overrides):
        overrides.append("checkpoint=/c.pt")
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose(ENTRIES[script], overrides=overrides)
    check_config(cfg)
