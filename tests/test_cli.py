from typer.testing import CliRunner

from tumoraug import __version__
from tumoraug.cli import app


def test_info_prints_versions():
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert f"tumoraug {__version__}" in result.output
    assert "torch" in result.output
