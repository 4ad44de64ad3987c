use super::*;

fn nodes(ids: &[(NodeId, &str)]) -> BTreeMap<NodeId, Node> {
    ids.iter()
        .map(|(id, raft)| {
            (
                *id,
                Node {
                    raft_address: raft.to_string(),
                    api_address: "127.0.0.1:1".into(),
                },
            )
        })
        .collect()
}

struct Cert {
    spki: [u8; 32],
    cn: Option<String>,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

impl Cert {
    fn named(id: NodeId, spki: u8) -> Cert {
        Cert {
            spki: [spki; 32],
            cn: Some(format!("node-{id}")),
            dns: vec!["localhost".into(), "gk-1.example".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
        }
    }
    fn caller(&self) -> Caller<'_> {
        Caller {
            spki_sha256: &self.spki,
            common_name: self.cn.as_deref(),
            dns_names: &self.dns,
            ip_addresses: &self.ips,
        }
    }
}

fn three() -> BTreeMap<NodeId, Node> {
    nodes(&[
        (1, "127.0.0.1:7001"),
        (2, "127.0.0.1:7002"),
        (3, "gk-3.example:7003"),
    ])
}

fn view<'a>(
    nodes: &'a BTreeMap<NodeId, Node>,
    pinned: &'a BTreeMap<NodeId, [u8; 32]>,
) -> ClusterView<'a> {
    ClusterView { nodes, pinned }
}

const RAFT: [ClusterCall; 5] = [
    ClusterCall::AppendEntries,
    ClusterCall::Vote,
    ClusterCall::InstallSnapshot,
    ClusterCall::ClientWrite,
    ClusterCall::ReadIndex,
];

#[test]
fn a_member_is_admitted_by_name_and_raft_host() {
    let n = three();
    let pinned = BTreeMap::new();
    for call in RAFT {
        assert_eq!(
            admit(view(&n, &pinned), Cert::named(2, 7).caller(), call, Some(2)),
            Ok(2)
        );
    }
    // A DNS host compares case-insensitively with the DNS SANs.
    let mut c3 = Cert::named(3, 8);
    c3.dns = vec!["GK-3.example".into()];
    assert_eq!(
        admit(
            view(&n, &pinned),
            c3.caller(),
            ClusterCall::FetchShare,
            Some(3)
        ),
        Ok(3)
    );
}

#[test]
fn a_name_outside_the_membership_or_without_the_host_is_refused() {
    let n = three();
    let pinned = BTreeMap::new();
    assert_eq!(
        admit(
            view(&n, &pinned),
            Cert::named(5, 5).caller(),
            ClusterCall::Vote,
            Some(5)
        ),
        Err(Refusal::NotInMembership { id: 5 })
    );
    // A removed member's certificate (even with its key still pinned by a leftover record).
    let pinned4 = BTreeMap::from([(4, [4; 32])]);
    assert_eq!(
        admit(
            view(&n, &pinned4),
            Cert::named(4, 4).caller(),
            ClusterCall::ClientWrite,
            None
        ),
        Err(Refusal::NotInMembership { id: 4 })
    );
    let mut c = Cert::named(3, 3);
    c.dns = vec!["localhost".into()];
    assert_eq!(
        admit(view(&n, &pinned), c.caller(), ClusterCall::Vote, Some(3)),
        Err(Refusal::HostMismatch {
            id: 3,
            host: "gk-3.example".into()
        })
    );
    let mut ip = Cert::named(1, 1);
    ip.ips = vec!["10.0.0.1".parse().unwrap()];
    assert!(matches!(
        admit(
            view(&n, &pinned),
            ip.caller(),
            ClusterCall::ClientWrite,
            None
        ),
        Err(Refusal::HostMismatch { id: 1, .. })
    ));
}

#[test]
fn certificates_not_named_node_id_are_refused() {
    let n = three();
    let pinned = BTreeMap::from([(1, [1; 32])]);
    for cn in [
        None,
        Some("operator"),
        Some("node-"),
        Some("node-01"),
        Some("node-1x"),
        Some("node--1"),
    ] {
        // Even with the key node 1 pins: identity is the name, the pin only restricts it.
        let mut c = Cert::named(1, 1);
        c.cn = cn.map(str::to_string);
        assert_eq!(
            admit(
                view(&n, &pinned),
                c.caller(),
                ClusterCall::ClientWrite,
                None
            ),
            Err(Refusal::UnknownCertificate {
                common_name: cn.map(str::to_string)
            }),
            "{cn:?}"
        );
    }
}

#[test]
fn a_renewed_certificate_keeps_raft_going_but_gets_no_share_until_registered() {
    let n = three();
    let pinned = BTreeMap::from([(2, [2; 32])]);
    let renewed = Cert::named(2, 0x22);
    for call in RAFT {
        assert_eq!(
            admit(view(&n, &pinned), renewed.caller(), call, Some(2)),
            Ok(2)
        );
    }
    assert_eq!(
        admit(
            view(&n, &pinned),
            renewed.caller(),
            ClusterCall::FetchShare,
            Some(2)
        ),
        Err(Refusal::StalePin { id: 2 })
    );
    // With the pinned key, shares too.
    assert_eq!(
        admit(
            view(&n, &pinned),
            Cert::named(2, 2).caller(),
            ClusterCall::FetchShare,
            Some(2)
        ),
        Ok(2)
    );
}

#[test]
fn a_record_pinning_another_members_key_does_not_change_who_that_member_is() {
    // Node 1 registered node 3's key as its own: node 3 is still node 3, and node 1's record
    // only restricts node 1's own share requests.
    let n = three();
    let pinned = BTreeMap::from([(1, [3; 32]), (3, [3; 32])]);
    let mut c3 = Cert::named(3, 3);
    c3.dns = vec!["gk-3.example".into()];
    for call in RAFT {
        assert_eq!(admit(view(&n, &pinned), c3.caller(), call, Some(3)), Ok(3));
    }
    assert_eq!(
        admit(
            view(&n, &pinned),
            c3.caller(),
            ClusterCall::FetchShare,
            Some(3)
        ),
        Ok(3)
    );
}

#[test]
fn a_member_cannot_speak_for_another() {
    let n = three();
    let pinned = BTreeMap::from([(1, [1; 32]), (2, [2; 32])]);
    for call in [
        ClusterCall::AppendEntries,
        ClusterCall::Vote,
        ClusterCall::InstallSnapshot,
        ClusterCall::FetchShare,
    ] {
        assert_eq!(
            admit(view(&n, &pinned), Cert::named(1, 1).caller(), call, Some(2)),
            Err(Refusal::WrongIdentity {
                caller: 1,
                claimed: 2
            })
        );
    }
}

#[test]
fn an_uninitialised_node_admits_any_node_name() {
    let empty = BTreeMap::new();
    let pinned = BTreeMap::new();
    let mut c = Cert::named(7, 7);
    c.dns.clear();
    c.ips.clear();
    assert_eq!(
        admit(
            view(&empty, &pinned),
            c.caller(),
            ClusterCall::AppendEntries,
            Some(7)
        ),
        Ok(7)
    );
    let mut op = Cert::named(7, 7);
    op.cn = Some("alice".into());
    assert!(matches!(
        admit(
            view(&empty, &pinned),
            op.caller(),
            ClusterCall::AppendEntries,
            Some(7)
        ),
        Err(Refusal::UnknownCertificate { .. })
    ));
}

#[test]
fn node_names_parse_strictly() {
    assert_eq!(node_id_of_name("node-1"), Some(1));
    assert_eq!(node_id_of_name("node-42"), Some(42));
    for bad in [
        "node-0",
        "node-",
        "node-+1",
        "Node-1",
        "node-1 ",
        "node-99999999999999999999",
    ] {
        assert_eq!(node_id_of_name(bad), None, "{bad}");
    }
}
