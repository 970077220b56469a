//! How an error is written on one line for logs, audit records and API answers: the one
//! formatter every crate uses, so a cause is never dropped from one place and kept in another.

/// An error and its sources on one line, `outer: cause: root cause`. No secret is ever part of
/// an error in this project, so the chain is safe to log.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn every_cause_in_order() {
        let leaf = E("connection refused", None);
        let mid = E("reading /run/x.sock", Some(Box::new(leaf)));
        let top = E("status", Some(Box::new(mid)));
        assert_eq!(
            error_chain(&top),
            "status: reading /run/x.sock: connection refused"
        );
        assert_eq!(error_chain(&E("alone", None)), "alone");
    }
}
