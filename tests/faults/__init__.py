"""Fault-injection suite (issue 6): faults in the Data Store, the disks, the object store and the
workers, and a catalogue of bad inputs.  See tests/faults/conftest.py for the summary ledger."""
