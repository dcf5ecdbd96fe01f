//! rpm-ostree treefiles (being written).
