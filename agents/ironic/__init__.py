"""The Ironic driver: bare-metal servers, each an Ironic node, through openstacksdk."""
