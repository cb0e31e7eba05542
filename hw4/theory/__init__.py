"""The homework's theory as executable code: each module computes a result the tests check
against a closed form or an independent computation (see docs/theory.md)."""
