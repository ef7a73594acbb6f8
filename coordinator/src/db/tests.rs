//! Job-level transitions, ids and space, on real SQLite files and in memory.

use super::*;

#[test]
fn deleting_a_job_gives_its_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gramzoom.db");
    let mut c = open(&path).unwrap();
    let pages = |c: &Connection| -> (i64, i64) {
        let count = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        let free = c.query_row("PRAGMA freelist_count", [], |r| r.get(0)).unwrap();
        (count, free)
    };
    let (empty, _) = pages(&c);
    let spec = v1::JobSpec { name: "x".repeat(200), ..Default::default() };
    let big = submit(&mut c, &spec, 40_000, 1, "style", "alice", 0).unwrap();
    let (full, _) = pages(&c);
    assert!(full > empty + 100, "40,000 segments take pages: {empty} -> {full}");
    cancel(&mut c, big, 1).unwrap();
    delete(&mut c, big).unwrap();
    let (after, free) = pages(&c);
    assert_eq!(free, 0, "deleted rows' pages stay in the file");
    assert!(after < full / 4, "the file kept {after} of {full} pages after the delete");
}

#[test]
fn ids_parse_only_as_written() {
    for (id, want) in [
        ("job-1", Some(1)),
        ("job-120", Some(120)),
        ("job-999999999999999999", Some(999_999_999_999_999_999)),
        ("job-01", None),
        ("job-+1", None),
        ("job--1", None),
        ("job- 1", None),
        ("job-1 ", None),
        ("job-", None),
        ("job-1e3", None),
        ("job-9999999999999999999", None),
        ("JOB-1", None),
        ("worker-1", None),
    ] {
        assert_eq!(parse_id(id, "job-"), want, "{id:?}");
    }
    let long = format!("job-{}", "1".repeat(3 << 20));
    let message = job_seq(&long).unwrap_err().to_string();
    assert!(message.len() < 120, "a 3 MiB id is quoted in full: {} bytes", message.len());
    assert!(message.starts_with("job \"job-111"), "{message}");
}

#[test]
fn only_an_ended_job_is_deleted_and_a_shared_style_is_kept() {
    let mut c = open(Path::new(":memory:")).unwrap();
    let spec = v1::JobSpec::default();
    let a = submit(&mut c, &spec, 4, 2, "style-1", "", 0).unwrap();
    let b = submit(&mut c, &spec, 4, 2, "style-1", "", 0).unwrap();
    let err = delete(&mut c, a).unwrap_err().to_string();
    assert_eq!(err, "job job-1 has not ended: it is queued; cancel it first");
    cancel(&mut c, a, 1).unwrap();
    assert_eq!(delete(&mut c, a).unwrap(), ("style-1".to_string(), true), "job b still uses the style");
    assert!(matches!(job(&c, a, true), Err(Error::JobNotFound(_))));
    let rows: i64 = c.query_row("SELECT COUNT(*) FROM segments WHERE job = ?1", [a], |r| r.get(0)).unwrap();
    assert_eq!(rows, 0);
    assert!(matches!(delete(&mut c, a), Err(Error::JobNotFound(_))));
    cancel(&mut c, b, 2).unwrap();
    assert_eq!(delete(&mut c, b).unwrap(), ("style-1".to_string(), false), "the last user of the style");
    assert!(list(&c, None).unwrap().is_empty());
}
