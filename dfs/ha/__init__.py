"""Metadata high availability through etcd."""
