//! Who controls an object: its controller owner reference, matched by UID. Names and labels
//! can be forged by anyone who can write the object; the owner's UID cannot be guessed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::api::GROUP;

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// Whether the object's controller is the object with `uid`.
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|o| o.uid == uid)
}

/// The controlling AgentSandbox (its name and UID), if the controller is one.
pub fn controlling_sandbox(meta: &ObjectMeta) -> Option<&OwnerReference> {
    controller_of(meta)
        .filter(|o| o.kind == "AgentSandbox" && o.api_version.split('/').next() == Some(GROUP))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(owners: Vec<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            owner_references: Some(owners),
            ..Default::default()
        }
    }

    fn owner(kind: &str, uid: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: "palisade.dev/v1alpha1".into(),
            kind: kind.into(),
            name: "agent".into(),
            uid: uid.into(),
            controller,
            block_owner_deletion: None,
        }
    }

    #[test]
    fn only_a_controller_reference_with_the_uid_counts() {
        let ours = meta(vec![owner("AgentSandbox", "u1", Some(true))]);
        assert!(controlled_by(&ours, "u1"));
        assert!(!controlled_by(&ours, "u2"));
        let not_controller = meta(vec![owner("AgentSandbox", "u1", None)]);
        assert!(!controlled_by(&not_controller, "u1"));
        assert!(controlling_sandbox(&not_controller).is_none());
        let other_kind = meta(vec![owner("Deployment", "u1", Some(true))]);
        assert!(controlling_sandbox(&other_kind).is_none());
        assert_eq!(
            controlling_sandbox(&ours).map(|o| o.uid.as_str()),
            Some("u1")
        );
        assert!(!controlled_by(&ObjectMeta::default(), "u1"));
    }
}
