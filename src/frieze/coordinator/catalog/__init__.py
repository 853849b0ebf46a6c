"""The catalog: hosts, apps, volumes, repositories, protection sets, policies, restore points, tokens."""
