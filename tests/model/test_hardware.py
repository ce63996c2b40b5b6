import pytest

from sft_pipeline.model.hardware import PROFILE_ENV, Hardware, choose_precision, cpu_flags, detect


@pytest.fixture(autouse=True)
def _no_injected_profile(monkeypatch):
    """These tests read the flags they pass in, not a profile a test run injects."""
    monkeypatch.delenv(PROFILE_ENV, raising=False)

AVX2 = "processor : 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
SAPPHIRE = "processor : 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_cpu_flags_parsed():
    assert {"avx2", "fma"} <= cpu_flags(AVX2)


def test_avx2_cpu_trains_in_fp32_and_bf16_request_warns():
    hw = detect(AVX2)
    if hw.device != "cpu":
        pytest.skip("a GPU host decides by the GPU")
    assert not hw.bf16_fast
    assert choose_precision("auto", hw) == ("fp32", None)
    precision, warning = choose_precision("bf16", hw)
    assert precision == "bf16" and "slowly" in warning and "AVX512-BF16" in warning


def test_amx_cpu_gets_bf16():
    hw = detect(SAPPHIRE)
    if hw.device != "cpu":
        pytest.skip("a GPU host decides by the GPU")
    assert hw.bf16_fast and "amx_bf16" in hw.reason
    assert choose_precision("auto", hw) == ("bf16", None)


def test_explicit_fp32_is_kept_without_warning():
    hw = Hardware("cpu", True, "x", 2, 1)
    assert choose_precision("fp32", hw) == ("fp32", None)
