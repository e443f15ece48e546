//! The schemas of single config fields that feature configs name with `schema_with`
//! (durations, CIDR lists): a leaf, so feature configs and the schema generator (`schema`)
//! need not import each other. `schema`'s tests hold each pattern to its parser.

use schemars::{json_schema, Schema, SchemaGenerator};

/// humantime's grammar: one or more `<number><unit>` (decimals too), spaces allowed between.
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+(\.[0-9]+)?\s*(nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y)\s*)+$";
/// An IPv4 or IPv6 network with its prefix length.
pub const CIDR_PATTERN: &str = r"^(((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])/(3[0-2]|[12]?[0-9])|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$";

pub fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": DURATION_PATTERN,
        "description": "A duration like \"10s\", \"500ms\", \"2m\" or \"1h 30m\"; more than 0 and at most 24h.",
        "examples": ["10s", "500ms", "2m"]
    })
}

pub fn cidr_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "type": "string",
            "pattern": CIDR_PATTERN,
            "description": "A network with its prefix length, e.g. \"10.0.0.0/8\" or \"2001:db8::/32\"."
        }
    })
}
