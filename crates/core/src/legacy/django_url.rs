//! Django's `URLValidator` as the legacy insert API applied it (being written).
