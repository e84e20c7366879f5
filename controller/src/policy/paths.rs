//! Sandbox paths as the compiler compares them.

/// Whether `path` is `dir` or lies below it (`/` holds everything). Both are normalized
/// absolute paths.
pub fn under(path: &str, dir: &str) -> bool {
    dir == "/" || path == dir || path.starts_with(&format!("{dir}/"))
}

#[cfg(test)]
mod tests {
    use super::under;

    #[test]
    fn a_path_is_under_itself_its_parents_and_the_root_only() {
        assert!(under("/a/b", "/a/b"));
        assert!(under("/a/b", "/a"));
        assert!(under("/a/b", "/"));
        assert!(!under("/ab", "/a"), "whole segments only");
        assert!(!under("/a", "/a/b"));
    }
}
