"""DataModules that read webdataset shards and inject deterministic label or caption noise."""
