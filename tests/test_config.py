"""Configs: typed, unknown keys and wrong types refused with the key path, overrides applied."""
import pytest

from prco_mega.config import (AlgoSection, DataSection, SamplingSection, WarmStartSection,
                              apply_override, from_dict, load_yaml)


def test_override_parses_yaml_values():
    data = {"algo": {"name": "prco"}}
    apply_override(data, "algo.clip_high=0.28")
    apply_override(data, "data.families={shapes: 2}")
    assert data == {"algo": {"name": "prco", "clip_high": 0.28}, "data": {"families": {"shapes": 2}}}


def test_exponent_without_a_dot_is_a_float():
    data = {}
    apply_override(data, "clip_high=2e-1")  # YAML 1.1 reads this as the string '2e-1'
    assert from_dict(AlgoSection, data).clip_high == 0.2


def test_sections_accept_good_values_and_coerce_ints_to_floats():
    algo = from_dict(AlgoSection, {"name": "dapo", "clip_high": 1, "dual_clip": 3})
    assert algo.clip_high == 1.0 and isinstance(algo.clip_high, float) and algo.dual_clip == 3.0


@pytest.mark.parametrize("cls,data,needle", [
    (AlgoSection, {"clip_hgh": 0.2}, r"unknown config key\(s\) \['clip_hgh'\] in algo"),
    (AlgoSection, {"clip_low": "wide"}, r"algo.clip_low: expected float, got str 'wide'"),
    (AlgoSection, {"name": "ppo"}, r"algo.name: 'ppo' is not one of"),
    (AlgoSection, {"dual_clip": 0.9}, r"algo.dual_clip \(0.9\) must be > 1"),
    (AlgoSection, {"kl_coef": -0.1}, r"kl_coef \(-0.1\) must be >= 0"),
    (DataSection, {"image_size": 100}, r"data.image_size \(100\) must be a multiple of 28"),
    (DataSection, {"source": "jsonl"}, r"data.path is required"),
    (SamplingSection, {"n": True}, r"expected an integer, got True"),
    (WarmStartSection, {"bias": 1.5}, r"warm_start.bias \(1.5\) must be in \[0, 1\]"),
    (WarmStartSection, {"bias": 0.5}, r"warm_start.bias \(0.5\) needs warm_start.misreads"),
    (WarmStartSection, {"misreads": {"polygon": {3: 4}}}, r"unknown family 'polygon'"),
    (WarmStartSection, {"misreads": {"polygons": {3: 7}}}, r"misreads.polygons.3 \(7\).*corners"),
    (WarmStartSection, {"misreads": {"bars": {2: 2}}}, r"misreads.bars.2 \(2\): a confusion"),
    (WarmStartSection, {"misreads": {"polygons": {"3": 4}}}, r"expected int, got str"),
])
def test_bad_values_name_the_key(cls, data, needle):
    section = {AlgoSection: "algo", DataSection: "data", SamplingSection: "sampling",
               WarmStartSection: "warm_start"}[cls]
    with pytest.raises(ValueError, match=needle):
        from_dict(cls, data, section)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")


def test_invalid_yaml_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("run:\n  steps: 3\ndata: [1, 2\nsolver: {}\n")
    with pytest.raises(ValueError, match=r"broken\.yaml' is not valid YAML: expected ',' or ']', "
                                         r"but got ':' at line 4, column 7$"):
        load_yaml(path)


def test_invalid_yaml_override_names_the_override_and_column():
    with pytest.raises(ValueError, match=r"override 'data\.families=\{a: 1': the value is not "
                                         r"valid YAML \(expected ',' or '\}', but got "
                                         r"'<stream end>' at line 1, column 20\)$"):
        apply_override({}, "data.families={a: 1")


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"run: {}\n\x00\x01",
                                     "run:\n  name: caf\xe9\n".encode("latin-1")])
def test_binary_config_file_is_named(tmp_path, content):
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"config file '.*model\.bin' is not a YAML text file"):
        load_yaml(path)


def test_image_limit_defaults_to_pils():
    from PIL import Image

    from prco_mega.data.images import PIL_MAX_IMAGE_PIXELS

    assert DataSection().max_image_pixels == PIL_MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match=r"data\.max_image_pixels \(0\) must be in"):
        from_dict(DataSection, {"max_image_pixels": 0}, "data")


def test_sampling_temperature_must_match_the_learner_log_prob_temperature():
    from prco_mega.config import RunConfig

    with pytest.raises(ValueError, match=r"solver.temperature \(0.7\) must equal "
                                         r"learner.logprob_temperature \(1.0\)"):
        from_dict(RunConfig, {"solver": {"temperature": 0.7}})
    cfg = from_dict(RunConfig, {"observer": {"temperature": 0.7}, "solver": {"temperature": 0.7},
                                "learner": {"logprob_temperature": 0.7}})
    assert cfg.learner.logprob_temperature == 0.7
