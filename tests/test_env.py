"""The fingerprint's CPU instruction-set flags, and the machine label that shows them where recorded."""
from __future__ import annotations

from retinabench.harness.env import ISA_FLAGS, cpu_isa, fingerprint, isa_summary, machine_label

# Abridged /proc/cpuinfo: an AMD EPYC without AVX-512, a Sapphire Rapids Xeon, an ARM server.
EPYC_7763 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr mmx fxsr sse sse2 ht syscall nx mmxext lm pni \
pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm sse4a \
fsgsbase bmi1 avx2 smep bmi2 erms rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec vaes vpclmulqdq
bugs\t\t: sysret_ss_attrs spectre_v1 spectre_v2 spec_store_bypass srso

processor\t: 1
flags\t\t: fpu sse sse2 fma avx avx2
"""
XEON_SPR = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
vmx flags\t: vnmi preemption_timer invvpid ept_x_only ept_ad tsc_offset vtpr avx512f
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512ifma avx512cd avx512bw \
avx512vl avx_vnni avx512_bf16 avx512vbmi avx512_vbmi2 avx512_vnni avx512_bitalg avx512_vpopcntdq amx_bf16 \
avx512_fp16 amx_tile amx_int8
"""
ARM = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm
CPU implementer\t: 0x41
"""


def test_isa_flags_parsed_from_cpuinfo():
    assert cpu_isa(EPYC_7763) == ["avx", "avx2", "fma"]
    # sorted; "vmx flags" (virtualisation features) is not the flags line
    assert cpu_isa(XEON_SPR) == ["amx_bf16", "amx_int8", "amx_tile", "avx", "avx2", "avx512_bf16", "avx512_fp16",
                                 "avx512_vnni", "avx512f", "avx_vnni", "fma"]
    assert cpu_isa(ARM) == [] and cpu_isa("") == []


def test_isa_summary():
    assert isa_summary(cpu_isa(EPYC_7763)) == "AVX2"
    assert isa_summary(cpu_isa(XEON_SPR)) == "AVX2 AVX-512 (BF16, FP16) AMX"
    assert isa_summary(["avx", "avx2", "avx512_bf16", "avx512f", "fma"]) == "AVX2 AVX-512 (BF16)"  # Zen 4
    assert isa_summary(["avx", "avx2", "avx512f"]) == "AVX2 AVX-512"
    assert isa_summary(["avx"]) == "AVX" and isa_summary([]) == ""


def test_fingerprint_records_the_isa():
    isa = fingerprint()["cpu_isa"]
    assert isinstance(isa, list) and isa == sorted(isa) and set(isa) <= set(ISA_FLAGS)


def test_machine_label_shows_the_isa_only_where_recorded():
    old = {"cpu_model": "AMD EPYC", "usable_cpus": 2}  # run folders from before cpu_isa: unchanged
    assert machine_label(old) == "AMD EPYC, 2 cores"
    assert machine_label({**old, "cpu_isa": []}) == "AMD EPYC, 2 cores"
    assert machine_label({**old, "cpu_isa": ["avx", "avx2", "fma"]}) == "AMD EPYC, 2 cores, AVX2"
    gpu = {"cpu_model": "Intel(R) Xeon(R) Processor", "usable_cpus": 16, "cpu_isa": cpu_isa(XEON_SPR),
           "gpu": {"name": "NVIDIA H200", "driver": "570.1"}}
    assert machine_label(gpu) == ("NVIDIA H200 (driver 570.1); Intel(R) Xeon(R) Processor, 16 cores, "
                                  "AVX2 AVX-512 (BF16, FP16) AMX")
    del gpu["cpu_isa"]
    assert machine_label(gpu) == "NVIDIA H200 (driver 570.1); Intel(R) Xeon(R) Processor, 16 cores"
