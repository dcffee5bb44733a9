"""The zero-configuration tour: an embedded PostgreSQL, a loopback S3 server and sample data."""
