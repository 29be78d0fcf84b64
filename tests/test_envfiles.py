from pathlib import Path

import pytest

from hpc.envfiles import check_secrets_file, read_dotenv
from hpc.errors import LaunchError


def test_dotenv_interpolates_login_env_defaults_and_earlier_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCH", "/scratch/me")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = tmp_path / "c.env"
    path.write_text(
        "# comment\n"
        "BASE=${SCRATCH}/proj\n"
        "CKPT=${BASE}/checkpoints\n"
        "FALLBACK=${NOT_SET_ANYWHERE:-/tmp/default}\n"
        "QUOTED='a b'\n"
    )
    assert read_dotenv(path) == {
        "BASE": "/scratch/me/proj",
        "CKPT": "/scratch/me/proj/checkpoints",
        "FALLBACK": "/tmp/default",
        "QUOTED": "a b",
    }


def test_an_unchanged_pack_is_read_from_the_cache_until_its_text_or_a_login_value_changes(tmp_path, monkeypatch):
    from hpc import envfiles

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("SCRATCH", "/scratch/a")
    path = tmp_path / "c.env"
    path.write_text("BASE=${SCRATCH}/proj\n")
    assert read_dotenv(path) == {"BASE": "/scratch/a/proj"}
    parse = envfiles._parse
    parsed = []
    monkeypatch.setattr(envfiles, "_parse", lambda *a: parsed.append(a[1]) or parse(*a))
    assert read_dotenv(path) == {"BASE": "/scratch/a/proj"} and parsed == []  # from the cache
    monkeypatch.setenv("SCRATCH", "/scratch/b")  # a login value it interpolates changed
    assert read_dotenv(path) == {"BASE": "/scratch/b/proj"} and len(parsed) == 1
    monkeypatch.setenv("UNRELATED", "x")  # a login value it does not use: still cached
    assert read_dotenv(path) == {"BASE": "/scratch/b/proj"} and len(parsed) == 1
    path.write_text("BASE=${SCRATCH}/other\n")  # its text changed
    assert read_dotenv(path) == {"BASE": "/scratch/b/other"} and len(parsed) == 2
    path.write_text("HF_TOKEN=x\n")  # a refusal is never cached
    for _ in range(2):
        with pytest.raises(LaunchError, match="looks like a secret"):
            read_dotenv(path)
    assert len(parsed) == 4 and len(list((tmp_path / "cache" / "hpc-launch" / "dotenv").iterdir())) == 1


@pytest.mark.parametrize("key", ["HF_TOKEN", "WANDB_API_KEY", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY",
                                 "SUPABASE_SERVICE_ROLE_KEY", "OPENAI_KEY", "CLIENT_SECRET", "GH_PAT", "AUTH",
                                 "GOOGLE_APPLICATION_CREDENTIALS", "HFTOKEN", "DB_PASS", "SESSION_COOKIE"])
def test_dotenv_refuses_secret_looking_keys(tmp_path, key):
    path = tmp_path / "c.env"
    path.write_text(f"{key}=abc\n")
    with pytest.raises(LaunchError, match=f"{key} looks like a secret; move it to your own secrets file"):
        read_dotenv(path)


def test_dotenv_allows_names_that_only_look_alike(tmp_path):
    path = tmp_path / "c.env"
    path.write_text("TOKENIZERS_PARALLELISM=false\nDC_AGENT_SECRET_ENV=/home/me/.secrets.env\nSSH_KEY_PATH=/k\n"
                    "SSH_KEY=/home/me/.ssh/tunnel\nKEYRING_BACKEND=x\nAUTHOR=me\nPATCH=1\n")
    assert len(read_dotenv(path)) == 7


@pytest.mark.parametrize("value", ["${HF_TOKEN}", "${WANDB_API_KEY:-x}", "'${OPENAI_API_KEY}'", "a${MY_SECRET}b"])
def test_dotenv_refuses_interpolating_a_secret_from_the_login_shell(tmp_path, monkeypatch, value):
    monkeypatch.setenv("HF_TOKEN", "hf_canary")
    path = tmp_path / "c.env"
    path.write_text(f"X={value}\n")
    with pytest.raises(LaunchError, match=r"X interpolates \$\{[A-Z_]+\}, which looks like a secret") as err:
        read_dotenv(path)
    assert "hf_canary" not in str(err.value)


def test_secrets_file_must_be_private(tmp_path):
    path = tmp_path / "secrets.env"
    path.write_text("HF_TOKEN=hf_x\n")
    path.chmod(0o644)
    with pytest.raises(LaunchError, match=r"accessible by others \(mode -rw-r--r--\); run: chmod 600"):
        check_secrets_file(str(path))
    path.chmod(0o600)
    assert check_secrets_file(str(path)) == path


def test_secrets_file_missing_or_not_a_file(tmp_path):
    with pytest.raises(LaunchError, match="does not exist"):
        check_secrets_file(str(tmp_path / "nope.env"))
    with pytest.raises(LaunchError, match="is not a regular file"):
        check_secrets_file(str(tmp_path))


def test_secrets_file_is_never_opened(tmp_path):
    """Python's audit hook sees every open (builtins.open, io.open, pathlib, os.open): the check opens nothing."""
    import sys

    path = tmp_path / "secrets.env"
    path.write_text("X=1\n")
    path.chmod(0o600)
    opened: list[str] = []
    watching = [True]
    sys.addaudithook(lambda event, args: watching[0] and event == "open" and opened.append(str(args[0])))
    try:
        assert check_secrets_file(str(path)) == path
        Path(tmp_path / "other").write_text("")  # the hook does see pathlib's writes and reads
    finally:
        watching[0] = False
    assert str(path) not in opened and str(tmp_path / "other") in opened
