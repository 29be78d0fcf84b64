import socket

import pytest
import yaml

from hpc.backends.slurm import detect
from hpc.backends.slurm.detect import match_cluster
from hpc.errors import LaunchError
from hpc.profiles import all_profiles, get_profile, load_profile

from helpers import local_profile_data

SHIPPED = [
    "jureca", "jupiter", "juwels", "leonardo", "capella", "alpha", "lrz", "vista",
    "lonestar", "claix", "nyugreene", "nyutorch", "oumi", "perlmutter", "frontier", "local",
]  # fmt: skip


def test_every_shipped_profile_loads_and_is_consistent():
    loaded = {p.name: p for p in all_profiles()}
    assert set(SHIPPED) <= set(loaded)
    for p in loaded.values():
        assert p.max_seconds >= 3600
        assert p.gpus_per_node >= 0 and p.cpus_per_node >= 1
    offline = {name for name, p in loaded.items() if not p.internet}
    assert {"jureca", "jupiter", "juwels", "leonardo", "frontier"} <= offline


def _write(tmp_path, data, name="mycluster"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_key_names_file_and_key(tmp_path):
    path = _write(tmp_path, local_profile_data(name="mycluster", gpus_per_nod=4))
    with pytest.raises(LaunchError, match=r"mycluster\.yaml: unknown key 'gpus_per_nod'"):
        load_profile(path)


def test_missing_key_names_file_and_key(tmp_path):
    data = local_profile_data(name="mycluster")
    del data["partition"]
    with pytest.raises(LaunchError, match=r"mycluster\.yaml: missing key 'partition'"):
        load_profile(_write(tmp_path, data))


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("gpus_per_node", "4", "key 'gpus_per_node' must be int"),
        ("gpus_per_node", True, "key 'gpus_per_node' must be int"),
        ("internet", "no", "key 'internet' must be bool"),
        ("modules", "CUDA", "key 'modules' must be list"),
        ("account", 17, "key 'account' must be str | None"),
    ],
)
def test_wrong_type_names_file_and_key(tmp_path, key, value, expected):
    with pytest.raises(LaunchError, match=rf"mycluster\.yaml: {expected}"):
        load_profile(_write(tmp_path, local_profile_data(name="mycluster", **{key: value})))


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"name": "other"}, "key 'name' is 'other' but the file is mycluster.yaml"),
        ({"slurm": {"gpu_request": "gpus"}}, "key 'slurm.gpu_request' must be one of"),
        ({"mem_per_node": "lots"}, "key 'mem_per_node' 'lots' is not a memory size; write it as e.g. 512G"),
        ({"mem_per_node": "512X"}, "key 'mem_per_node' '512X' is not a memory size"),
        ({"gpu_request": "gres"}, r"key 'gpu_request' moved into the slurm: section; write it as slurm: {gpu_request"),
        ({"slurm_cluster_names": ["x"]}, r"moved into the slurm: section; write it as slurm: {cluster_names: ...}"),
        ({"slurm": {"sbatch_extras": []}}, "unknown key slurm.sbatch_extras; valid keys are cluster_names"),
        ({"slurm": {"export_none": "no"}}, "key 'slurm.export_none' must be bool"),
        ({"slurm": ["--exclusive"]}, "key 'slurm' must be a mapping of SLURM settings"),
        ({"gpu_types": {"big": ["--constraint=big"]}}, "gpu_types is now a list of GPU type names"),
        ({"gpu_types": ["a"], "gpu_type": "a", "slurm": {"gpu_constraints": {"b": ["-C", "b"]}}},
         "slurm.gpu_constraints names 'b', which gpu_types does not list"),
        ({"default_time": "13:00:00"}, "default_time 13:00:00 exceeds max_time 12:00:00"),
        ({"partition": "gpu --qos=high"}, "key 'partition' has characters sbatch cannot take"),
        ({"hostname_patterns": ["login[0-9"]}, "is not a valid regex"),
        ({"master_addr_suffix": "i; rm"}, "master_addr_suffix"),
        ({"partitions": {"gpu\n": {"max_nodes": 2}}}, r"partition name 'gpu\\n' is not one sbatch can take$"),
    ],
)
def test_bad_values_are_refused(tmp_path, changes, expected):
    with pytest.raises(LaunchError, match=expected):
        load_profile(_write(tmp_path, local_profile_data(**{"name": "mycluster", **changes})))


def test_not_yaml_is_one_clear_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(LaunchError, match=r"broken\.yaml is not valid YAML"):
        load_profile(path)


def test_unknown_cluster_lists_the_known_ones():
    with pytest.raises(LaunchError) as err:
        get_profile("nosuchcluster")
    assert "unknown cluster 'nosuchcluster'" in str(err.value)
    assert "jureca" in str(err.value) and "local" in str(err.value)


def test_user_directory_adds_and_overrides_profiles(user_profiles):
    user_profiles("mylab")
    user_profiles("local", partition="cpu")
    assert get_profile("mylab").partition == "gpu"
    assert get_profile("local").partition == "cpu"  # the user's copy wins over the built-in one


def test_profile_path_that_is_not_a_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HPC_LAUNCH_PROFILES", str(tmp_path / "missing"))
    with pytest.raises(LaunchError, match="HPC_LAUNCH_PROFILES names .* which is not a directory"):
        get_profile("local")


def _p(tmp_path, name, **changes):
    return load_profile(_write(tmp_path, local_profile_data(name=name, **changes), name))


def test_cluster_name_wins_over_hostname(tmp_path):
    a = _p(tmp_path, "alpha1", slurm={"cluster_names": ["alpha"]}, hostname_patterns=[])
    b = _p(tmp_path, "beta1", slurm={}, hostname_patterns=[r"login\d+\.alpha"])
    assert match_cluster([b, a], "alpha", ["login1.alpha"]) is a
    assert match_cluster([b, a], None, ["login1.alpha"]) is b
    assert match_cluster([b, a], "unknown", ["login1.alpha"]) is b


def test_hostname_patterns_match_the_whole_name(tmp_path):
    capella = _p(tmp_path, "capella1", slurm={}, hostname_patterns=[r"c\d+"])
    assert match_cluster([capella], None, ["c3"]) is capella
    # a start-anchored re.match would take a Vista compute node for Capella (upstream bug)
    assert match_cluster([capella], None, ["c610-021.vista.tacc.utexas.edu"]) is None


def test_shipped_patterns_do_not_overlap():
    loaded = all_profiles()
    for p in loaded:
        for other in loaded:
            if other is not p:
                assert not set(p.slurm.cluster_names) & set(other.slurm.cluster_names), (p.name, other.name)


def test_detection_failure_says_what_to_do(monkeypatch):
    monkeypatch.setattr(detect, "cluster_name", lambda: None)
    monkeypatch.setattr(socket, "gethostname", lambda: "laptop")
    monkeypatch.setattr(socket, "getfqdn", lambda: "laptop.home")
    with pytest.raises(LaunchError, match="cannot tell which cluster this is .* pass --cluster NAME"):
        detect.detect_profile()


def test_detection_uses_slurm_cluster_name(monkeypatch):
    monkeypatch.setattr(detect, "cluster_name", lambda: "local")
    assert detect.detect_profile().name == "local"


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"tunnel_host": "login; rm -rf /"}, "key 'tunnel_host' must be an ssh destination"),
        ({"tunnel_direct": ["10.0.0.0/33"]}, "tunnel_direct entry '10.0.0.0/33' is not a network"),
        ({"signal_seconds": 30}, "signal_seconds must be at least 120"),
        ({"name": "x\ntouch pwned"}, r"key 'name' 'x\\ntouch pwned' may hold only letters, digits"),
        ({"eval_command": ["run", "{modle}"]}, r"eval_command has a bad placeholder \({modle}\)"),
        ({"eval_command": ["run", "{model.foo}"]}, r"eval_command has a bad placeholder \({model.foo}\)"),
        ({"eval_command": ["run", "{model[0]}"]}, r"eval_command has a bad placeholder \({model\[0\]}\)"),
        ({"eval_command": ["run", "{model!r}"]}, r"eval_command has a bad placeholder \({model!r}\)"),
        ({"eval_command": ["run", "{"]}, r"eval_command has a bad placeholder \(Single '{'"),
    ],
)
def test_bad_optional_values_are_refused(tmp_path, changes, expected):
    with pytest.raises(LaunchError, match=expected):
        load_profile(_write(tmp_path, local_profile_data(**{"name": "mycluster", **changes})))


def test_placeholders_fill_every_argument_and_keep_escaped_braces():
    from hpc.placeholders import fill

    assert fill(["run", "a{{b{x}c}}", 3, "{x}{y}"], {"x": 1, "y": "Y"}, "cmd") == ["run", "a{b1c}", "3", "1Y"]


@pytest.mark.parametrize("arg, shown", [("{model:>10}", "{model:>10}"), ("{model!r:>10}", "{model!r:>10}"),
                                        ("x{tasks!s}", "{tasks!s}"), ("{nope}", "{nope}")])
def test_a_bad_placeholder_is_shown_whole_with_the_names_that_work(arg, shown):
    from hpc.placeholders import fill

    with pytest.raises(LaunchError) as err:
        fill(["run", arg], {"model": "m", "tasks": "t"}, "the x profile's eval_command")
    assert str(err.value) == (f"the x profile's eval_command has a bad placeholder ({shown}); use {{model}}, {{tasks}}, "
                              "and {{ }} for a brace")


@pytest.mark.parametrize("text, mb", [("8000", 8000), ("8000M", 8000), ("512G", 524288), ("0.5T", 524288),
                                      ("1024K", 1), ("16g", 16384)])
def test_memory_sizes_read_as_slurm_does(text, mb):
    from hpc.profiles import megabytes

    assert megabytes(text) == mb
