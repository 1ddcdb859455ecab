//! Resources: CPU, memory, hugepages (where the node has the controller)
//! and cgroup v2 unified keys, checked before they reach the runtime.

use super::*;

/// The CFS period the kernel itself defaults to; a quota alone is
/// meaningless without one.
pub(super) const DEFAULT_CPU_PERIOD: u64 = 100_000;

pub(super) fn non_negative(field: &str, value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| invalid(format!("resources: {field} {value} is negative")))
}

/// Page sizes as the kernel's hugetlb controller names them: a number and
/// a unit ("2MB", "1GB", "64KB").
pub(super) fn valid_page_size(size: &str) -> bool {
    let digits = size.chars().take_while(char::is_ascii_digit).count();
    digits > 0 && matches!(&size[digits..], "KB" | "MB" | "GB" | "TB" | "PB")
}

/// The OCI resources for UpdateContainerResources (no device rules: those
/// stay as created).
pub fn update_resources(r: &Resources, hugetlb: bool) -> Result<LinuxResources> {
    resources(r, Vec::new(), hugetlb)
}

/// Hugepage limits are checked either way but applied only when `hugetlb`
/// (the node has the controller): kubelet sends one for every page size
/// the node has, and runc fails on a limit it cannot set.
pub(super) fn resources(
    r: &Resources,
    devices: Vec<LinuxDeviceCgroup>,
    hugetlb: bool,
) -> Result<LinuxResources> {
    let mut out = LinuxResources::default();
    out.set_devices(Some(devices));
    out.set_cpu(cpu(r)?);
    out.set_memory(memory(r)?);
    let mut hugepages = Vec::new();
    for (size, limit) in &r.hugepage_limits {
        if !valid_page_size(size) {
            return Err(invalid(format!(
                "resources: hugepage_limits page size {size:?} is not like \"2MB\""
            )));
        }
        let limit = i64::try_from(*limit).map_err(|_| {
            invalid(format!(
                "resources: hugepage_limits {size} limit {limit} is too large"
            ))
        })?;
        hugepages.push(
            LinuxHugepageLimitBuilder::default()
                .page_size(size.clone())
                .limit(limit)
                .build()
                .map_err(spec_err)?,
        );
    }
    if !hugetlb && !hugepages.is_empty() {
        tracing::debug!(
            limits = hugepages.len(),
            "hugepage limits dropped: no hugetlb cgroup controller (or it is turned off)"
        );
        hugepages.clear();
    }
    out.set_hugepage_limits((!hugepages.is_empty()).then_some(hugepages));
    out.set_unified(unified(&r.unified));
    Ok(out)
}

pub(super) fn unified(map: &BTreeMap<String, String>) -> Option<HashMap<String, String>> {
    (!map.is_empty()).then(|| map.clone().into_iter().collect())
}

pub(super) fn cpu(r: &Resources) -> Result<Option<LinuxCpu>> {
    let shares = non_negative("cpu_shares", r.cpu_shares)?;
    let quota = non_negative("cpu_quota", r.cpu_quota)?;
    let period = non_negative("cpu_period", r.cpu_period)?;
    let mut b = LinuxCpuBuilder::default();
    let mut any = false;
    if shares > 0 {
        b = b.shares(shares);
        any = true;
    }
    if quota > 0 {
        b = b.quota(r.cpu_quota).period(if period > 0 {
            period
        } else {
            DEFAULT_CPU_PERIOD
        });
        any = true;
    } else if period > 0 {
        b = b.period(period);
        any = true;
    }
    if !r.cpuset_cpus.is_empty() {
        b = b.cpus(r.cpuset_cpus.clone());
        any = true;
    }
    if !r.cpuset_mems.is_empty() {
        b = b.mems(r.cpuset_mems.clone());
        any = true;
    }
    if !any {
        return Ok(None);
    }
    b.build().map(Some).map_err(spec_err)
}

pub(super) fn memory(r: &Resources) -> Result<Option<LinuxMemory>> {
    let limit = non_negative("memory_limit_in_bytes", r.memory_limit_in_bytes)?;
    // -1 is how kubelet (UnlimitedSwap on cgroup v1) asks for unlimited
    // swap, and runc takes it as that; anything lower is a mistake.
    let swap = if r.memory_swap_limit_in_bytes == -1 {
        -1
    } else {
        non_negative("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes)?;
        r.memory_swap_limit_in_bytes
    };
    let mut b = LinuxMemoryBuilder::default();
    let mut any = false;
    if limit > 0 {
        b = b.limit(r.memory_limit_in_bytes);
        any = true;
    }
    // runc reads swap as the memory+swap total, which is what the CRI
    // field holds.
    if swap != 0 {
        b = b.swap(swap);
        any = true;
    }
    if !any {
        return Ok(None);
    }
    b.build().map(Some).map_err(spec_err)
}
