"""Test peer of the Hyper-V driver: a WinRM (WS-Management) endpoint with a Hyper-V host model behind it.

No Windows host can exist on the machines the tests run on, so this package stands in
for one: wsman.py speaks the WinRM shell protocol over HTTPS to any conforming client
(the driver's pywinrm, unmocked), powershell.py parses the PowerShell sent to it, and
hyperv.py executes the Hyper-V cmdlets with their semantics. peer.py starts it.
"""
