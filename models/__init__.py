"""The models bundled with lstm_infer (installed as the package data ``lstm_infer.models``)."""
