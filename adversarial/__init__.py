"""The adversarial suite: hostile input, faults and load against a real `gateway serve`."""
