use super::*;

#[test]
fn member_names_are_normalised() {
    assert_eq!(normalise("./index.json").as_deref(), Some("index.json"));
    assert_eq!(normalise("a/./b//c").as_deref(), Some("a/b/c"));
    assert_eq!(
        normalise("a/../b/layer.tar").as_deref(),
        Some("b/layer.tar")
    );
    assert_eq!(normalise("/abs").as_deref(), Some("abs"));
    assert_eq!(normalise("../escape"), None);
}

#[test]
fn reader_errors_become_one_short_line() {
    assert_eq!(one_line("a\nb\tc"), "a b c");
    let long = one_line("x".repeat(500));
    assert_eq!(long.chars().count(), 121);
    assert!(long.ends_with('…'));
}

#[test]
fn blob_names_carry_their_digest() {
    let d = Digest::of(b"x");
    assert_eq!(blob_name(&format!("blobs/sha256/{}", d.hex())), Some(d));
    assert_eq!(blob_name("blobs/sha256/nothex"), None);
    assert_eq!(blob_name("blobs/sha512/00"), None);
}

#[test]
fn links_are_followed_to_a_member() {
    let mut s = Scanned::default();
    let d = Digest::of(b"layer");
    s.members.insert(
        "a/layer.tar".into(),
        Member {
            digest: d.clone(),
            size: 5,
        },
    );
    s.links.insert("b/layer.tar".into(), "a/layer.tar".into());
    s.links.insert("c".into(), "c".into());
    let (name, m) = s.resolve("./b/layer.tar").expect("resolved");
    assert_eq!((name.as_str(), &m.digest), ("a/layer.tar", &d));
    assert!(s.resolve("c").is_none());
    assert!(s.resolve("missing").is_none());
}
