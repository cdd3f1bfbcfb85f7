#!/usr/bin/env python3
"""Records how a real NVML answers the calls gpulse's NVML backend depends on.

Reads only: it changes no clocks, power limits, persistence or MIG settings. It needs
NVIDIA's own Python binding (nvidia-ml-py, imported as pynvml) and prints one JSON
document: for every call, the value or the NVML error it returned, and for every field
id the return code, the value type the driver labelled it with and the raw value read
under each interpretation. The NVML test library (nvml-mock) is checked against these
answers; docs/nvml-mock.md says which quirks they showed.

    python3 scripts/nvml-probe.py > probe.json
"""

import ctypes
import json
import sys
import time

import pynvml as n


def plain(value):
    """Turns ctypes structures, arrays and bytes into JSON-friendly values."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    if isinstance(value, ctypes.Array):
        return [plain(v) for v in value]
    if isinstance(value, (ctypes.Structure, ctypes.Union)):
        return {name: plain(getattr(value, name)) for name, *_ in value._fields_}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "__dict__"):
        return {k: plain(v) for k, v in vars(value).items() if not k.startswith("_")}
    return repr(value)


def call(name, *args):
    fn = getattr(n, name, None)
    if fn is None:
        return {"missing_in_binding": name}
    try:
        return {"ok": plain(fn(*args))}
    except n.NVMLError as e:
        return {"error": str(e), "code": e.value}
    except Exception as e:  # a binding or symbol problem, recorded rather than fatal
        return {"exception": f"{type(e).__name__}: {e}"}


def field_ids():
    ids = {}
    for name in dir(n):
        if name.startswith("NVML_FI_") and name != "NVML_FI_MAX":
            value = getattr(n, name)
            if isinstance(value, int):
                ids.setdefault(value, name)
    return ids


def field(handle, fid, scope=0):
    try:
        v = n.nvmlDeviceGetFieldValues(handle, [(fid, scope)])[0]
    except n.NVMLError as e:
        return {"error": str(e), "code": e.value}
    out = {"return": v.nvmlReturn, "valueType": v.valueType, "timestamp": v.timestamp}
    if v.nvmlReturn == 0:
        u = v.value
        out.update(dVal=u.dVal, uiVal=u.uiVal, ullVal=u.ullVal, sllVal=u.sllVal)
    return out


def device(i):
    h = n.nvmlDeviceGetHandleByIndex(i)
    d = {"index": i}
    for name in [
        "nvmlDeviceGetName", "nvmlDeviceGetUUID", "nvmlDeviceGetSerial",
        "nvmlDeviceGetArchitecture", "nvmlDeviceGetBrand", "nvmlDeviceGetPciInfo",
        "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetPowerUsage", "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetPowerManagementLimit",
        "nvmlDeviceGetPowerManagementLimitConstraints", "nvmlDeviceGetPowerManagementDefaultLimit",
        "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons",
        "nvmlDeviceGetSupportedClocksEventReasons", "nvmlDeviceGetSupportedClocksThrottleReasons",
        "nvmlDeviceGetCurrPcieLinkGeneration", "nvmlDeviceGetMaxPcieLinkGeneration",
        "nvmlDeviceGetGpuMaxPcieLinkGeneration", "nvmlDeviceGetCurrPcieLinkWidth",
        "nvmlDeviceGetMaxPcieLinkWidth", "nvmlDeviceGetPcieReplayCounter",
        "nvmlDeviceGetPcieSpeed", "nvmlDeviceGetMigMode", "nvmlDeviceGetMaxMigDeviceCount",
        "nvmlDeviceGetPersistenceMode", "nvmlDeviceGetComputeMode", "nvmlDeviceGetEccMode",
        "nvmlDeviceGetPerformanceState", "nvmlDeviceGetFanSpeed", "nvmlDeviceGetNumFans",
        "nvmlDeviceGetSupportedEventTypes", "nvmlDeviceGetComputeRunningProcesses",
        "nvmlDeviceGetGpcClkVfOffset", "nvmlDeviceGetMemClkVfOffset",
        "nvmlGpmQueryDeviceSupport", "nvmlDeviceGetVirtualizationMode",
        "nvmlDeviceGetGspFirmwareMode", "nvmlDeviceGetBoardPartNumber",
        "nvmlDeviceGetInforomImageVersion", "nvmlDeviceGetVbiosVersion",
    ]:
        d[name] = call(name, h)
    d["pcie_throughput"] = {k: call("nvmlDeviceGetPcieThroughput", h, v)
                            for k, v in (("tx", 0), ("rx", 1))}
    d["temperature"] = {s: call("nvmlDeviceGetTemperature", h, 0) for s in ["gpu"]}
    d["temperatureV"] = call("nvmlDeviceGetTemperatureV", h, 0)
    d["temperature_thresholds"] = {
        str(t): call("nvmlDeviceGetTemperatureThreshold", h, t) for t in range(0, 8)}
    clocks = {"graphics": 0, "sm": 1, "mem": 2, "video": 3}
    d["clock_info"] = {k: call("nvmlDeviceGetClockInfo", h, v) for k, v in clocks.items()}
    d["max_clock_info"] = {k: call("nvmlDeviceGetMaxClockInfo", h, v) for k, v in clocks.items()}
    d["applications_clock"] = {k: call("nvmlDeviceGetApplicationsClock", h, v) for k, v in clocks.items()}
    d["default_applications_clock"] = {
        k: call("nvmlDeviceGetDefaultApplicationsClock", h, v) for k, v in clocks.items()}
    d["violation_status"] = {
        str(p): call("nvmlDeviceGetViolationStatus", h, p) for p in list(range(0, 6)) + [10, 11]}
    d["ecc_errors"] = {
        f"{kind}/{counter}": call("nvmlDeviceGetTotalEccErrors", h, kind, counter)
        for kind in (0, 1) for counter in (0, 1)}
    d["retired_pages"] = call("nvmlDeviceGetRetiredPages", h, 0)
    d["remapped_rows"] = call("nvmlDeviceGetRemappedRows", h)
    d["process_utilization_since_0"] = call("nvmlDeviceGetProcessUtilization", h, 0)
    d["process_utilization_since_now"] = call(
        "nvmlDeviceGetProcessUtilization", h, int(time.time() * 1e6))
    d["nvlink"] = {}
    for link in range(0, getattr(n, "NVML_NVLINK_MAX_LINKS", 18)):
        d["nvlink"][str(link)] = {
            "state": call("nvmlDeviceGetNvLinkState", h, link),
            "version": call("nvmlDeviceGetNvLinkVersion", h, link),
            "remote_pci": call("nvmlDeviceGetNvLinkRemotePciInfo", h, link),
            "replay_errors": call("nvmlDeviceGetNvLinkErrorCounter", h, link, 0),
        }
    mig = d["nvmlDeviceGetMaxMigDeviceCount"].get("ok") or 0
    d["mig_handles"] = {str(k): call("nvmlDeviceGetMigDeviceHandleByIndex", h, k) for k in range(mig)}
    ids = field_ids()
    d["fields"] = {f"{fid}:{ids[fid]}": field(h, fid) for fid in sorted(ids)}
    # NVLink fields are scoped per link: link 0 and the last slot show what each scope does.
    d["fields_scoped"] = {
        f"{fid}:{ids[fid]}@{scope}": field(h, fid, scope)
        for fid in sorted(ids) if "NVLINK" in ids[fid] for scope in (0, 1, 17, 35)}
    # Event registration: what XID watching reports. Registration changes nothing on the GPU.
    try:
        es = n.nvmlEventSetCreate()
        d["register_xid"] = call("nvmlDeviceRegisterEvents", h, n.nvmlEventTypeXidCriticalError, es)
        d["event_wait_0ms"] = call("nvmlEventSetWait", es, 0)
        n.nvmlEventSetFree(es)
    except n.NVMLError as e:
        d["register_xid"] = {"error": str(e), "code": e.value}
    return d


def main():
    n.nvmlInit()
    out = {
        "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "binding": getattr(n, "__version__", "unknown"),
        "driver": call("nvmlSystemGetDriverVersion"),
        "nvml": call("nvmlSystemGetNVMLVersion"),
        "cuda_driver": call("nvmlSystemGetCudaDriverVersion_v2"),
        "count": n.nvmlDeviceGetCount(),
    }
    out["devices"] = [device(i) for i in range(out["count"])]
    n.nvmlShutdown()
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
