// Tests for the render module land here.
