// Tests for the config module land here.
