import math

import pytest

from kosmos_demo.settings import DecodingSettings, SettingsError


def test_defaults_follow_official_demo():
    s = DecodingSettings()
    assert s.strategy == "greedy" and s.no_repeat_ngram_size == 3
    kwargs = s.generate_kwargs()
    assert kwargs["do_sample"] is False and kwargs["num_beams"] == 1 and "temperature" not in kwargs


def test_each_strategy_sends_only_its_fields():
    beam = DecodingSettings(strategy="beam", num_beams=4, length_penalty=0.5).generate_kwargs()
    assert beam["num_beams"] == 4 and beam["length_penalty"] == 0.5 and not beam["do_sample"]
    sample = DecodingSettings(strategy="sample", temperature=0.7, top_p=0.9, top_k=20).generate_kwargs()
    assert sample["do_sample"] and (sample["temperature"], sample["top_p"], sample["top_k"]) == (0.7, 0.9, 20)


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", math.nan), ("temperature", -1.0), ("temperature", 0.0), ("top_p", 0.0), ("top_p", 1.5),
        ("num_beams", 1000), ("num_beams", 0), ("max_new_tokens", 1_000_000), ("max_new_tokens", 0),
        ("top_k", -1), ("repetition_penalty", math.inf), ("no_repeat_ngram_size", 2.5), ("seed", -3),
        ("temperature", "hot"), ("num_beams", True), ("max_new_tokens", None or [3]), ("length_penalty", "nan"),
    ],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(SettingsError) as caught:
        DecodingSettings(strategy="sample" if field in ("temperature", "top_p") else "greedy", **{field: value})
    assert caught.value.field == field
    assert field in str(caught.value)


def test_range_is_in_the_message():
    with pytest.raises(SettingsError, match=r"between 1 and 8 \(got 1000\)"):
        DecodingSettings(num_beams=1000)


def test_beam_needs_two_beams():
    with pytest.raises(SettingsError, match="num_beams"):
        DecodingSettings(strategy="beam", num_beams=1)


def test_unknown_strategy_and_key():
    with pytest.raises(SettingsError, match="strategy"):
        DecodingSettings(strategy="nucleus")
    with pytest.raises(SettingsError, match="temprature"):
        DecodingSettings.from_mapping({"temprature": 1.0})


def test_loose_input_is_coerced():
    s = DecodingSettings.from_mapping({"max_new_tokens": "12", "temperature": "0.5", "top_k": 7.0, "seed": None})
    assert (s.max_new_tokens, s.temperature, s.top_k, s.seed) == (12, 0.5, 7, 0)
    assert isinstance(s.max_new_tokens, int)


def test_min_over_max_refused():
    with pytest.raises(SettingsError, match="min_new_tokens"):
        DecodingSettings(max_new_tokens=4, min_new_tokens=8)


@pytest.mark.parametrize(
    "fields",
    [{"strategy": "x" * 100_000}, {"max_new_tokens": "9" * 100_000}, {"max_new_tokens": "lots" * 25_000},
     {"strategy": "sample", "top_k": "9" * 4000}, {"strategy": "sample", "top_k": int("9" * 4000)},
     {"temperature": [0.5] * 50_000}, {"x" * 100_000: 1}],
    ids=["strategy", "max_new_tokens digits", "max_new_tokens text", "top_k digits", "top_k int", "list", "key"],
)
def test_a_long_value_is_quoted_short(fields):
    with pytest.raises(SettingsError) as caught:
        DecodingSettings.from_mapping(fields)
    message = str(caught.value)
    assert len(message) < 600 and "9" * 100 not in message and "x" * 100 not in message
    assert "\u2026" in message  # it says it was cut
