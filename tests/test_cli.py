from typer.testing import CliRunner

from tumoraug import __version__
from tumoraug.cli import app


def test_info_prints_versions():
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert f"tumoraug {__version__}" in result.output
    assert "torch" in result.output


def test_info_reports_optional_extras(monkeypatch):
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("monai") is not None:
        assert "extra 'monai'" in CliRunner().invoke(app, ["info"]).output
    real = importlib.metadata.version

    def without_monai(name):
        if name == "monai":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", without_monai)
    output = CliRunner().invoke(app, ["info"]).output
    assert 'monai: not installed (pip install "tumoraug[monai]")' in output


def test_version_flag_prints_the_version_and_stops():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"tumoraug {__version__}"


def test_shell_completion_script_is_offered(monkeypatch):
    import shellingham

    help_text = CliRunner().invoke(app, ["--help"]).output
    assert "--install-completion" in help_text and "--show-completion" in help_text
    # typer detects the shell from the process tree, which a detached test run may lack
    monkeypatch.setattr(shellingham, "detect_shell", lambda: ("bash", "/bin/bash"))
    result = CliRunner().invoke(app, ["--show-completion"], prog_name="tumoraug")
    assert result.exit_code == 0, result.output
    assert "_TUMORAUG_COMPLETE" in result.output and "complete" in result.output
