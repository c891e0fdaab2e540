//! Who may do what on the management API: permissions are resource × operation, granted to
//! roles. The three system roles live here; custom roles slot in as more rows of the same table.

use super::Role;

/// What the management API manages, one variant per area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Customers,
    Teams,
    Users,
    VirtualKeys,
    /// Spend and usage reports.
    Usage,
    /// The audit trail: events, verification, exports.
    Audit,
    /// Identity providers and sessions of others.
    Identity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    /// Create, update, delete, rotate.
    Write,
    /// Bulk export (recorded as `data_export`).
    Export,
}

/// Whether `role` may perform `op` on `resource`.
/// Admin: everything. Developer: manages virtual keys, reads everything else, exports audit.
/// Viewer: reads only.
pub fn allows(role: Role, resource: Resource, op: Op) -> bool {
    match (role, op) {
        (Role::Admin, _) => true,
        (_, Op::Read) => resource != Resource::Identity,
        (Role::Developer, Op::Write) => resource == Resource::VirtualKeys,
        (Role::Developer, Op::Export) => matches!(resource, Resource::Audit | Resource::Usage),
        (Role::Viewer, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_system_roles_grant_what_they_say() {
        use Op::*;
        use Resource::*;
        for r in [Customers, Teams, Users, VirtualKeys, Usage, Audit, Identity] {
            for o in [Read, Write, Export] {
                assert!(allows(Role::Admin, r, o));
            }
        }
        assert!(allows(Role::Developer, VirtualKeys, Write));
        assert!(!allows(Role::Developer, Teams, Write) && !allows(Role::Developer, Customers, Write));
        assert!(allows(Role::Developer, Audit, Read) && allows(Role::Developer, Usage, Read));
        assert!(allows(Role::Developer, Audit, Export));
        assert!(allows(Role::Viewer, Teams, Read) && allows(Role::Viewer, Audit, Read));
        assert!(!allows(Role::Viewer, VirtualKeys, Write) && !allows(Role::Viewer, Audit, Export));
        assert!(!allows(Role::Viewer, Identity, Read) && !allows(Role::Developer, Identity, Read));
    }
}
