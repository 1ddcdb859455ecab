//! ListMetricDescriptors, ListPodSandboxMetrics and StreamPodSandboxMetrics
//! (kubelet's PodAndContainerStatsFromCRI): the cAdvisor metrics kubelet
//! exports, read from each pod's cgroups and network namespace as the
//! stats RPCs read them. Container metrics carry the labels
//! `container, pod, namespace, id, image`; the pod's network metrics
//! `pod, namespace, id, interface`.

use super::Cri;
use crate::door::{feed, serve, Feed};
use berth_actors::container::messages::{ContainerUsage, PodStats, PodUsage};
use berth_actors::container::stats::{InterfaceUsage, Pressure, Psi};
use berth_protocol::cri::*;
use tonic::{Response, Status};

const CONTAINER_LABELS: [&str; 5] = ["container", "pod", "namespace", "id", "image"];
const NETWORK_LABELS: [&str; 4] = ["pod", "namespace", "id", "interface"];

/// A container metric: its name, help, type and how it is read.
struct ContainerMetric {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    value: fn(&ContainerUsage) -> Option<u64>,
}

const CONTAINER_METRICS: [ContainerMetric; 15] = [
    ContainerMetric {
        name: "container_cpu_usage_seconds_total",
        help: "Cumulative cpu time consumed in seconds.",
        kind: MetricType::Counter,
        value: |u| u.cgroup.cpu_usage_core_nanos.map(|n| n / 1_000_000_000),
    },
    ContainerMetric {
        name: "container_memory_usage_bytes",
        help:
            "Current memory usage in bytes, including all memory regardless of when it was accessed",
        kind: MetricType::Gauge,
        value: |u| u.cgroup.memory_usage_bytes,
    },
    ContainerMetric {
        name: "container_memory_working_set_bytes",
        help: "Current working set in bytes.",
        kind: MetricType::Gauge,
        value: |u| u.cgroup.memory_working_set_bytes,
    },
    ContainerMetric {
        name: "container_memory_rss",
        help: "Size of RSS in bytes.",
        kind: MetricType::Gauge,
        value: |u| u.cgroup.memory_rss_bytes,
    },
    ContainerMetric {
        name: "container_processes",
        help: "Number of processes running inside the container.",
        kind: MetricType::Gauge,
        value: |u| u.cgroup.pids,
    },
    ContainerMetric {
        name: "container_oom_events_total",
        help: "Count of out of memory events observed for the container",
        kind: MetricType::Counter,
        value: |u| u.cgroup.oom_kills,
    },
    ContainerMetric {
        name: "container_memory_swap",
        help: "Container swap usage in bytes.",
        kind: MetricType::Gauge,
        value: |u| u.cgroup.swap_usage_bytes,
    },
    ContainerMetric {
        name: "container_fs_reads_bytes_total",
        help: "Cumulative count of bytes read",
        kind: MetricType::Counter,
        value: |u| u.cgroup.io_read_bytes,
    },
    ContainerMetric {
        name: "container_fs_writes_bytes_total",
        help: "Cumulative count of bytes written",
        kind: MetricType::Counter,
        value: |u| u.cgroup.io_write_bytes,
    },
    ContainerMetric {
        name: "container_pressure_cpu_waiting_seconds_total",
        help: "Total time duration tasks in the container have waited due to CPU congestion.",
        kind: MetricType::Counter,
        value: |u| stalled(u, |p| p.cpu.as_ref(), false),
    },
    ContainerMetric {
        name: "container_pressure_cpu_stalled_seconds_total",
        help: "Total time duration no tasks in the container could make progress due to CPU congestion.",
        kind: MetricType::Counter,
        value: |u| stalled(u, |p| p.cpu.as_ref(), true),
    },
    ContainerMetric {
        name: "container_pressure_memory_waiting_seconds_total",
        help: "Total time duration tasks in the container have waited due to memory congestion.",
        kind: MetricType::Counter,
        value: |u| stalled(u, |p| p.memory.as_ref(), false),
    },
    ContainerMetric {
        name: "container_pressure_memory_stalled_seconds_total",
        help: "Total time duration no tasks in the container could make progress due to memory congestion.",
        kind: MetricType::Counter,
        value: |u| stalled(u, |p| p.memory.as_ref(), true),
    },
    ContainerMetric {
        name: "container_pressure_io_waiting_seconds_total",
        help: "Total time duration tasks in the container have waited due to IO congestion.",
        kind: MetricType::Counter,
        value: |u| stalled(u, |p| p.io.as_ref(), false),
    },
    ContainerMetric {
        name: "container_pressure_io_stalled_seconds_total",
        help: "Total time duration no tasks in the container could make progress due to IO congestion.",
        kind: MetricType::Counter,
        value: |u| stalled(u, |p| p.io.as_ref(), true),
    },
];

/// Seconds some (or, `full`, all) of the container's tasks stalled on a
/// resource, from its pressure reading.
fn stalled(u: &ContainerUsage, which: fn(&Pressure) -> Option<&Psi>, full: bool) -> Option<u64> {
    let psi = u.cgroup.pressure.as_ref().and_then(which)?;
    let line = if full { psi.full.as_ref()? } else { &psi.some };
    Some(line.total_micros / 1_000_000)
}

/// A pod network metric: its name, help and counter.
struct NetworkMetric {
    name: &'static str,
    help: &'static str,
    value: fn(&InterfaceUsage) -> u64,
}

const NETWORK_METRICS: [NetworkMetric; 8] = [
    NetworkMetric {
        name: "container_network_receive_bytes_total",
        help: "Cumulative count of bytes received",
        value: |i| i.rx_bytes,
    },
    NetworkMetric {
        name: "container_network_receive_packets_total",
        help: "Cumulative count of packets received",
        value: |i| i.rx_packets,
    },
    NetworkMetric {
        name: "container_network_receive_errors_total",
        help: "Cumulative count of errors encountered while receiving",
        value: |i| i.rx_errors,
    },
    NetworkMetric {
        name: "container_network_receive_packets_dropped_total",
        help: "Cumulative count of packets dropped while receiving",
        value: |i| i.rx_dropped,
    },
    NetworkMetric {
        name: "container_network_transmit_bytes_total",
        help: "Cumulative count of bytes transmitted",
        value: |i| i.tx_bytes,
    },
    NetworkMetric {
        name: "container_network_transmit_packets_total",
        help: "Cumulative count of packets transmitted",
        value: |i| i.tx_packets,
    },
    NetworkMetric {
        name: "container_network_transmit_errors_total",
        help: "Cumulative count of errors encountered while transmitting",
        value: |i| i.tx_errors,
    },
    NetworkMetric {
        name: "container_network_transmit_packets_dropped_total",
        help: "Cumulative count of packets dropped while transmitting",
        value: |i| i.tx_dropped,
    },
];

fn descriptors() -> Vec<MetricDescriptor> {
    let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    CONTAINER_METRICS
        .iter()
        .map(|m| MetricDescriptor {
            name: m.name.into(),
            help: m.help.into(),
            label_keys: keys(&CONTAINER_LABELS),
        })
        .chain(NETWORK_METRICS.iter().map(|m| MetricDescriptor {
            name: m.name.into(),
            help: m.help.into(),
            label_keys: keys(&NETWORK_LABELS),
        }))
        .collect()
}

fn metric(name: &str, kind: MetricType, at: i64, labels: Vec<String>, v: u64) -> Metric {
    Metric {
        name: name.into(),
        timestamp: at,
        metric_type: kind as i32,
        label_values: labels,
        value: Some(UInt64Value { value: v }),
    }
}

/// One pod's metrics, as of its reading.
fn pod_metrics(p: &PodUsage) -> PodSandboxMetrics {
    let pod = &p.sandbox;
    let (name, namespace) = (
        pod.config.metadata.name.clone(),
        pod.config.metadata.namespace.clone(),
    );
    let at = p.total.timestamp_unix_nanos;
    let network = p
        .network
        .iter()
        .flat_map(|i| {
            NETWORK_METRICS.iter().map(|m| {
                let labels = vec![
                    name.clone(),
                    namespace.clone(),
                    pod.id.clone(),
                    i.name.clone(),
                ];
                metric(m.name, MetricType::Counter, at, labels, (m.value)(i))
            })
        })
        .collect();
    let containers = p
        .containers
        .iter()
        .map(|c| {
            let labels = vec![
                c.record.config.name.clone(),
                name.clone(),
                namespace.clone(),
                c.record.id.clone(),
                c.record.config.image.clone(),
            ];
            ContainerMetrics {
                container_id: c.record.id.clone(),
                metrics: CONTAINER_METRICS
                    .iter()
                    .filter_map(|m| {
                        let v = (m.value)(c)?;
                        let at = c.cgroup.timestamp_unix_nanos;
                        Some(metric(m.name, m.kind, at, labels.clone(), v))
                    })
                    .collect(),
            }
        })
        .collect();
    PodSandboxMetrics {
        pod_sandbox_id: pod.id.clone(),
        metrics: network,
        container_metrics: containers,
    }
}

impl Cri {
    pub(super) async fn metric_descriptors(
        &self,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        serve("ListMetricDescriptors", async {
            Ok(ListMetricDescriptorsResponse {
                descriptors: descriptors(),
            })
        })
        .await
    }

    /// Every ready pod's usage.
    async fn usage(&self) -> Result<Vec<PodUsage>, berth_actors::Error> {
        self.node.container.call(PodStats::default()).await
    }

    pub(super) async fn list_pod_metrics(
        &self,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        serve("ListPodSandboxMetrics", async {
            let pods = self.usage().await?;
            Ok(ListPodSandboxMetricsResponse {
                pod_metrics: pods.iter().map(pod_metrics).collect(),
            })
        })
        .await
    }

    pub(super) async fn stream_pod_metrics(
        &self,
    ) -> Result<Response<Feed<StreamPodSandboxMetricsResponse>>, Status> {
        serve("StreamPodSandboxMetrics", async {
            let pods = self.usage().await?;
            Ok(feed(&pods, |c| StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics: c.iter().map(pod_metrics).collect(),
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_descriptor_names_as_many_labels_as_its_metrics_carry() {
        let d = descriptors();
        assert_eq!(d.len(), CONTAINER_METRICS.len() + NETWORK_METRICS.len());
        let mut names: Vec<_> = d.iter().map(|m| m.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), d.len(), "names are unique");
        assert!(d
            .iter()
            .all(|m| m.label_keys.len() == 5 || m.label_keys.len() == 4));
    }
}
