"""CPU and DRAM energy through Linux RAPL (the powercap sysfs tree)."""
