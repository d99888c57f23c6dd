"""The operators' files (docker-compose.yml, Dockerfile) agree with the programs they run.

No Docker engine runs here, so these check what can go stale without one: every setting the compose
file passes is one the proxy or scorer really reads, images are pinned, and the image installs
every package and entry point.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from proxy.config import load_config
from scorer.config import build_parser as scorer_parser

REPO = Path(__file__).resolve().parent.parent
_DEFAULTED = re.compile(r"\$\{(\w+)(?::-([^}]*)|:\?[^}]*)?\}")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def expand(value: str, env: dict[str, str]) -> str:
    """${VAR:-default} and ${VAR:?error} as compose expands them."""
    return _DEFAULTED.sub(lambda m: env.get(m.group(1), m.group(2) or ""), value)


def test_third_party_images_are_pinned_to_a_version() -> None:
    for name, service in compose()["services"].items():
        if "build" in service or service.get("image", "").startswith("infinitehash/"):
            continue
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image} is not pinned"


def test_the_proxy_service_environment_is_a_valid_proxy_config() -> None:
    service = compose()["services"]["proxy"]
    env = {k: expand(str(v), {"CLICKHOUSE_PASSWORD": "pw"}) for k, v in service["environment"].items()}
    assert all(k.startswith("IH_") for k in env)
    config = load_config([], environ=env)  # raises on an unknown value; unknown names are checked below
    option_names = {f"IH_{name.upper()}" for name in (*vars(config), *vars(config.limits))}
    assert set(env) <= option_names, set(env) - option_names
    assert config.listen == "0.0.0.0:3333" and config.ledger_url.startswith("http://ih:pw@clickhouse:8123/")
    ports = {p.split(":")[-1] for p in service["ports"]}
    assert {"3333", "9464"} <= ports
    assert "127.0.0.1:9464:9464" in service["ports"]  # metrics and the API stay on the host


def test_the_scorer_service_command_is_one_ih_scorer_accepts() -> None:
    service = compose()["services"]["scorer"]
    assert service["entrypoint"] == ["ih-scorer"]
    scorer_parser().parse_args(service["command"])  # exits on an unknown flag
    assert "IH_CLICKHOUSE_URL" in service["environment"]  # the password stays off the command line


def test_the_image_installs_every_package_and_the_entry_points() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    for package in project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert f"COPY {package} ./{package}" in dockerfile
    assert "uv sync --locked" in dockerfile
    assert '"ih-proxy"' in dockerfile and "ih-proxy" in project["project"]["scripts"]
