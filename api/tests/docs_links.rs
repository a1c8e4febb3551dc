//! The README and the pages under `docs/` link only to files inside the repository, and every
//! such link resolves: a user who clones the repository has nothing else.

use std::path::{Component, Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("api/ has a parent")
        .to_path_buf()
}

/// The markdown pages a user reads: the README and everything under `docs/`.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("docs/ is readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    out
}

/// The targets of the inline links `[text](target)` and images `![alt](target)` of `text`.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    out
}

/// `path` with `.` and `..` folded, without touching the file system.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn broken_links(root: &Path, pages: &[PathBuf]) -> Vec<String> {
    let mut broken = Vec::new();
    for page in pages {
        let text = std::fs::read_to_string(page).expect("page is readable");
        for target in link_targets(&text) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let file = target.split('#').next().unwrap_or("");
            if file.is_empty() {
                continue; // an anchor on the same page
            }
            let resolved = normalise(&page.parent().expect("a page has a folder").join(file));
            if !resolved.starts_with(root) || !resolved.exists() {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    broken
}

#[test]
fn every_link_in_the_readme_and_docs_resolves_inside_the_repository() {
    let root = repo_root();
    let pages = pages(&root);
    assert!(pages.len() >= 6, "found only {pages:?}");
    let broken = broken_links(&root, &pages);
    assert!(broken.is_empty(), "links that do not resolve: {broken:#?}");
}

#[test]
fn a_link_outside_the_repository_is_reported() {
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page.md");
    std::fs::write(
        &page,
        "see [the contract](../elsewhere/API.md) and [x](missing.md)",
    )
    .unwrap();
    // The page is outside the repository: both links count as broken.
    assert_eq!(broken_links(&root, &[page]).len(), 2);
    let inside = root.join("README.md");
    assert!(broken_links(&root, &[inside]).is_empty());
}

#[test]
fn the_readme_is_short() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(lines <= 300, "README.md has {lines} lines; at most 300");
}
