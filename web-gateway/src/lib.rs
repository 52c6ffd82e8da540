//! Not implemented yet: this crate is filled in by issue 7. It exposes nothing, so
//! nothing can mistake it for a working service.
