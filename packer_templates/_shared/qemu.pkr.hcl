# The one Packer template of every appliance (packer_templates/_shared/: no appliance.yaml, so appliance
# discovery never takes it for one). It boots the appliance's starting disk under QEMU with a NoCloud
# seed, runs the provisioners over SSH as a throwaway build user, records the installed packages and
# seals. What differs between appliances arrives as variables: the pipeline's (pipeline/builder:
# template_variables and QemuMachine.template_variables; README "Building an image") and an appliance's
# own `variables:` in its appliance.yaml. The distribution family (apt: Debian, Ubuntu; dnf: EL) is read
# from the guest's /etc/os-release, here and in provisioners/.
# Written for Debian's packer 1.6.6: HCL2 without `packer init` or required_plugins.

variable "base_image" {
  type        = string
  description = "the disk the build starts from (qcow2): the pipeline's bootstrapped base, a verified upstream cloud image or another appliance's output"
}

variable "output_directory" {
  type        = string
  description = "where Packer writes the disk; must not exist yet"
}

variable "vm_name" {
  type        = string
  description = "file name of the output disk"
}

variable "disk_size" {
  type        = string
  default     = "3G"
  description = "virtual size of the built disk (hardware.disk_gb)"
}

variable "skip_resize_disk" {
  type        = bool
  default     = true
  description = "keep the starting disk's size: true when the pipeline made that disk (bootstrap, layered), false for an upstream image"
}

variable "accelerator" {
  type    = string
  default = "tcg"
}

variable "machine_type" {
  type        = string
  default     = "pc"
  description = "QEMU machine type; the pipeline's accelerator probe boots the same machine"
}

variable "cpu_model" {
  type        = string
  default     = "max"
  description = "QEMU -cpu model (host under KVM, max under TCG), the one the probe proved"
}

variable "machine_qemuargs" {
  type        = list(list(string))
  default     = []
  description = "-machine (replacing Packer's own), under TCG -accel and the RAM backend, under UEFI OVMF's pflash devices (QemuMachine.machine_args)"
}

variable "ssh_timeout" {
  type        = string
  default     = "30m"
  description = "how long to wait for the guest's SSH (short under KVM: the build then retries under TCG)"
}

variable "ssh_handshake_attempts" {
  type        = number
  default     = 400
  description = "the guest's SSH resets connections until its network is up (a slow boot under TCG)"
}

variable "boot_wait" {
  type        = string
  default     = "1s"
  description = "nothing is typed at the console: no reason to wait before the SSH wait starts"
}

variable "cpus" {
  type    = number
  default = 2
}

variable "memory" {
  type    = number
  default = 1024
}

variable "seed_dir" {
  type        = string
  description = "NoCloud seed folder holding meta-data and user-data (served as the cidata CD)"
}

variable "ssh_username" {
  type    = string
  default = "vmi-build"
}

variable "ssh_private_key_file" {
  type        = string
  description = "the per-build ed25519 key the seed authorises for ssh_username"
}

variable "scripts" {
  type        = list(string)
  description = "the appliance's provisioners, in order (the last one seals the image)"
}

variable "provisioner_env" {
  type        = list(string)
  default     = []
  description = "extra NAME=value pairs for the provisioners, after BUILD_USER and the family-neutral defaults"
}

variable "package_list" {
  type        = string
  description = "host path that receives the installed package list"
}

variable "serial_log" {
  type        = string
  description = "host file that receives the guest's serial console"
}

source "qemu" "appliance" {
  iso_url            = var.base_image
  iso_checksum       = "none" # the pipeline verifies (upstream images) or content-addresses (its own bases) the disk
  disk_image         = true
  disk_size          = var.disk_size
  skip_resize_disk   = var.skip_resize_disk
  format             = "qcow2"
  disk_interface     = "virtio"
  disk_discard       = "unmap"
  disk_detect_zeroes = "unmap"
  accelerator        = var.accelerator
  machine_type       = var.machine_type
  cpus               = var.cpus
  memory             = var.memory
  headless           = true
  vnc_bind_address   = "127.0.0.1"
  output_directory   = var.output_directory
  vm_name            = var.vm_name
  cd_files           = ["${var.seed_dir}/meta-data", "${var.seed_dir}/user-data"]
  cd_label           = "cidata"
  qemuargs = concat([
    ["-cpu", var.cpu_model],
    # no option ROM on the NIC: OVMF would try a network boot before the disk (and SeaBIOS skips its ROM)
    ["-device", "virtio-net,netdev=user.0,romfile="],
    # Packer's own port forward listens on every interface: keep the build's SSH on loopback
    ["-netdev", "user,id=user.0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"],
    ["-serial", "file:${var.serial_log}"],
  ], var.machine_qemuargs)
  communicator           = "ssh"
  ssh_username           = var.ssh_username
  ssh_private_key_file   = var.ssh_private_key_file
  ssh_timeout            = var.ssh_timeout
  ssh_handshake_attempts = var.ssh_handshake_attempts
  # seal.sh leaves the last steps (remove the build user, trim) in /run/vmi-finish.sh
  shutdown_command = "sudo -n /bin/sh /run/vmi-finish.sh"
  shutdown_timeout = "10m"
  boot_wait        = var.boot_wait
}

build {
  sources = ["source.qemu.appliance"]

  provisioner "shell" {
    # cloud-init (which created the build user from the seed) must be done before anything else
    inline = ["cloud-init status --wait >/dev/null || cloud-init status --long"]
  }

  provisioner "shell" {
    scripts          = var.scripts
    execute_command  = "chmod +x {{ .Path }}; sudo -n env {{ .Vars }} {{ .Path }}"
    environment_vars = concat(["BUILD_USER=${var.ssh_username}", "DEBIAN_FRONTEND=noninteractive", "LANG=C.UTF-8"], var.provisioner_env)
  }

  provisioner "shell" {
    # the SBOM: every installed package (status, name, version, arch, source), on tmpfs only; the
    # package database of the guest's family (as provisioners/ decide it, from /etc/os-release)
    inline = [
      ". /etc/os-release",
      "case \" $ID $ID_LIKE \" in *\" rhel \"* | *\" fedora \"* | *\" centos \"*) family=dnf ;; *) family=apt ;; esac",
      "if [ \"$family\" = dnf ]; then rpm -qa --queryformat 'ii \\t%%{NAME}\\t%|EPOCH?{%%{EPOCH}:}|%%{VERSION}-%%{RELEASE}\\t%%{ARCH}\\t%%{SOURCERPM}\\n'; else dpkg-query -W -f '$${db:Status-Abbrev}\\t$${Package}\\t$${Version}\\t$${Architecture}\\t$${source:Package}\\n'; fi > /dev/shm/vmi-packages.tsv",
    ]
  }

  provisioner "file" {
    direction   = "download"
    source      = "/dev/shm/vmi-packages.tsv"
    destination = var.package_list
  }
}
