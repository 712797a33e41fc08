"""The read side: pure folds over canonical snapshots, the access policy, history and views."""
