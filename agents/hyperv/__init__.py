"""The Hyper-V driver: Windows Hyper-V hosts managed remotely over WinRM (PowerShell's Hyper-V module)."""
