"""The Foundry link, parent process only: the poller (admission, ledger, posting answers), the runtime
service and its HTTP transport."""
