//! Pins a handful of facts of the published CRI wire contract, so that an
//! accidental edit of api.proto (a renumbered field, a renamed package)
//! fails here rather than in front of kubelet.

use berth_protocol::cri::*;
use prost::Message;
use std::collections::HashMap;

/// The field numbers (with wire types) present in an encoded message.
fn tags(bytes: &[u8]) -> Vec<(u32, u8)> {
    let mut out = Vec::new();
    let mut buf = bytes;
    while !buf.is_empty() {
        let key = prost::encoding::decode_varint(&mut buf).expect("key");
        let (field, wire) = ((key >> 3) as u32, (key & 7) as u8);
        out.push((field, wire));
        match wire {
            0 => {
                prost::encoding::decode_varint(&mut buf).expect("varint");
            }
            2 => {
                let len = prost::encoding::decode_varint(&mut buf).expect("len") as usize;
                buf = &buf[len..];
            }
            other => panic!("unexpected wire type {other}"),
        }
    }
    out
}

#[test]
fn version_request_encodes_as_published() {
    let bytes = VersionRequest {
        version: "0.1.0".into(),
    }
    .encode_to_vec();
    assert_eq!(bytes, b"\x0a\x050.1.0");
    let resp = VersionResponse {
        version: "a".into(),
        runtime_name: "b".into(),
        runtime_version: "c".into(),
        runtime_api_version: "d".into(),
    }
    .encode_to_vec();
    assert_eq!(resp, b"\x0a\x01a\x12\x01b\x1a\x01c\x22\x01d");
}

#[test]
fn pod_sandbox_config_field_numbers() {
    let config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "n".into(),
            uid: "u".into(),
            namespace: "ns".into(),
            attempt: 1,
        }),
        hostname: "h".into(),
        log_directory: "/l".into(),
        dns_config: Some(DnsConfig::default()),
        port_mappings: vec![PortMapping::default()],
        labels: HashMap::from([("k".into(), "v".into())]),
        annotations: HashMap::from([("k".into(), "v".into())]),
        linux: Some(LinuxPodSandboxConfig::default()),
        windows: Some(WindowsPodSandboxConfig::default()),
    };
    let fields: Vec<u32> = tags(&config.encode_to_vec()).iter().map(|t| t.0).collect();
    assert_eq!(fields, vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);

    let meta = PodSandboxMetadata {
        name: "n".into(),
        uid: "u".into(),
        namespace: "ns".into(),
        attempt: 3,
    }
    .encode_to_vec();
    assert_eq!(tags(&meta), vec![(1, 2), (2, 2), (3, 2), (4, 0)]);
}

#[test]
fn run_pod_sandbox_request_carries_the_handler_in_field_2() {
    let bytes = RunPodSandboxRequest {
        config: None,
        runtime_handler: "runc".into(),
    }
    .encode_to_vec();
    assert_eq!(bytes, b"\x12\x04runc");
}

#[test]
fn enum_values_as_published() {
    assert_eq!(ContainerState::ContainerCreated as i32, 0);
    assert_eq!(ContainerState::ContainerRunning as i32, 1);
    assert_eq!(ContainerState::ContainerExited as i32, 2);
    assert_eq!(ContainerState::ContainerUnknown as i32, 3);
    assert_eq!(PodSandboxState::SandboxReady as i32, 0);
    assert_eq!(PodSandboxState::SandboxNotready as i32, 1);
    assert_eq!(CgroupDriver::Systemd as i32, 0);
    assert_eq!(CgroupDriver::Cgroupfs as i32, 1);
    assert_eq!(NamespaceMode::Pod as i32, 0);
    assert_eq!(NamespaceMode::Target as i32, 3);
    assert_eq!(Protocol::Sctp as i32, 2);
}

#[test]
fn service_paths_as_kubelet_calls_them() {
    use berth_protocol::cri::image_service_server::ImageServiceServer;
    use berth_protocol::cri::runtime_service_server::RuntimeServiceServer;
    use tonic::server::NamedService;
    // The gRPC service names are the package plus the service.
    assert_eq!(
        <RuntimeServiceServer<()> as NamedService>::NAME,
        "runtime.v1.RuntimeService"
    );
    assert_eq!(
        <ImageServiceServer<()> as NamedService>::NAME,
        "runtime.v1.ImageService"
    );
}
