//! Not implemented yet: this crate is filled in by issues 3 and 5. It exposes nothing, so
//! nothing can mistake it for a working service.
