//! Not implemented yet: this crate is filled in by issues 4 and 6. It exposes nothing, so
//! nothing can mistake it for a working service.
